// Host logic of the SelectiveScan TensorRT plugin (see the header).
#include "selectiveScanPluginLogic.h"

#include "selectiveScanKernel.h"

#include <cstring>
#include <limits>

namespace avs
{

std::string resolvePluginInputs(int32_t nbInputs, ScanInputRoles& roles)
{
    return resolveScanInputs(nbInputs, nullptr, roles);
}

bool scanSupportsFormat(
    int32_t pos, int32_t nbInputs, int32_t nbOutputs, int32_t const* types, int32_t const* formats)
{
    if (pos < 0 || pos >= nbInputs + nbOutputs || nbOutputs != kSCAN_NB_OUTPUTS
        || nbInputs < kSCAN_NB_REQUIRED_INPUTS || nbInputs > kSCAN_NB_SLOTS || formats[pos] != kSCAN_FORMAT_LINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return types[0] == kSCAN_TYPE_FLOAT || types[0] == kSCAN_TYPE_HALF;
    }
    // Positions are slots (the contract's positional rule); the output y takes u's type.
    bool const float32 = pos < nbInputs && scanSlotIsFloat32(pos);
    return types[pos] == (float32 ? kSCAN_TYPE_FLOAT : types[0]);
}

std::string checkScanShapes(ScanInputRoles const& roles, ScanTensorDims const* inputs, ScanSizes& sizes)
{
    std::string message = checkScanInputShapes(roles, inputs, sizes);
    if (!message.empty())
    {
        return message;
    }
    if (sizes.dstate > kSCAN_CUDA_MAX_DSTATE)
    {
        return "SelectiveScan: N = " + std::to_string(sizes.dstate) + " exceeds the CUDA kernel's limit of "
            + std::to_string(kSCAN_CUDA_MAX_DSTATE) + " states";
    }
    if (sizes.batch > 0 && sizes.dim > 0 && sizes.batch * sizes.dim > std::numeric_limits<int32_t>::max())
    {
        return "SelectiveScan: batch * D = " + std::to_string(sizes.batch * sizes.dim)
            + " rows exceed the CUDA kernel's grid limit of 2^31 - 1";
    }
    return {};
}

std::string scanOutputDims(ScanInputRoles const& roles, ScanTensorDims const* inputs, ScanTensorDims& output)
{
    ScanSizes sizes;
    std::string message = checkScanShapes(roles, inputs, sizes);
    if (message.empty())
    {
        output = inputs[roles.input(ScanSlot::kU)];
    }
    return message;
}

std::string scanLaunchParams(ScanInputRoles const& roles, ScanTensorDims const* inputs, int32_t dataType,
    ScanPluginAttributes const& attributes, SelectiveScanParams& params)
{
    ScanSizes sizes;
    std::string message = checkScanShapes(roles, inputs, sizes);
    if (!message.empty())
    {
        return message;
    }
    if (dataType != kSCAN_TYPE_FLOAT && dataType != kSCAN_TYPE_HALF)
    {
        return "SelectiveScan: u must be fp32 or fp16, got TensorRT DataType " + std::to_string(dataType);
    }
    ScanDataType const type = dataType == kSCAN_TYPE_HALF ? ScanDataType::kFLOAT16 : ScanDataType::kFLOAT32;
    return fillScanParams(sizes, type, attributes.deltaSoftplus != 0, params);
}

std::string parseScanFields(ScanField const* fields, int32_t nbFields, ScanPluginAttributes& attributes)
{
    attributes = ScanPluginAttributes{};
    for (int32_t i = 0; i < nbFields; ++i)
    {
        ScanField const& field = fields[i];
        if (field.name == nullptr || std::strcmp(field.name, kSCAN_ATTR_DELTA_SOFTPLUS) != 0)
        {
            continue;
        }
        if (field.type != kSCAN_FIELD_TYPE_INT32 || field.length != 1 || field.data == nullptr)
        {
            return "SelectiveScan: field delta_softplus must be one INT32 value (an ONNX INT attribute), got "
                   "PluginFieldType "
                + std::to_string(field.type) + " with length " + std::to_string(field.length);
        }
        int32_t value = 0;
        std::memcpy(&value, field.data, sizeof(value));
        std::string message = checkScanDeltaSoftplus(value);
        if (!message.empty())
        {
            return message;
        }
        attributes.deltaSoftplus = value;
    }
    return {};
}

ScanField scanSerializedField(ScanPluginAttributes const& attributes)
{
    return ScanField{kSCAN_ATTR_DELTA_SOFTPLUS, &attributes.deltaSoftplus, kSCAN_FIELD_TYPE_INT32, 1};
}

} // namespace avs
