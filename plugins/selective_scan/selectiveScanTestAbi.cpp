// C ABI for the Python tests (ctypes), compiled into libavs_scan_plugin_logic.so only: the contract's constants
// (avsScanContract*) and the plugin logic (avsScanLogic*). Messages are NUL-terminated and truncated to messageSize.
// Dims arrays hold kSCAN_MAX_RANK int64 extents per input. Functions returning int32_t status give 0 on success,
// 1 with a message otherwise. Nothing here is used by the plugin or the ONNX Runtime op.
#include "selectiveScanPluginLogic.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <iterator>
#include <vector>

namespace
{

//! Copies `message` into a caller's buffer (truncated, NUL-terminated) and returns 1, or returns 0 for "".
int32_t report(std::string const& message, char* buffer, int32_t bufferSize)
{
    if (message.empty())
    {
        return 0;
    }
    if (buffer != nullptr && bufferSize > 0)
    {
        size_t const n = std::min(message.size(), static_cast<size_t>(bufferSize - 1));
        std::memcpy(buffer, message.data(), n);
        buffer[n] = '\0';
    }
    return 1;
}

void unpackDims(int32_t nbInputs, int32_t const* ranks, int64_t const* dims, avs::ScanTensorDims* out)
{
    for (int32_t i = 0; i < nbInputs && i < avs::kSCAN_NB_SLOTS; ++i)
    {
        out[i].nbDims = std::clamp(ranks[i], 0, avs::kSCAN_MAX_RANK);
        std::copy(dims + i * avs::kSCAN_MAX_RANK, dims + (i + 1) * avs::kSCAN_MAX_RANK, out[i].d.begin());
    }
}

} // namespace

extern "C"
{

    //! The node's op_type, domain, opset version, plugin_version and plugin_namespace, and the output's name.
    __attribute__((visibility("default"))) void avsScanContractIdentity(char const** opName, char const** domain,
        int32_t* opsetVersion, char const** pluginVersion, char const** pluginNamespace, char const** outputName)
    {
        *opName = avs::kSCAN_OP_NAME;
        *domain = avs::kSCAN_DOMAIN;
        *opsetVersion = avs::kSCAN_OPSET_VERSION;
        *pluginVersion = avs::kSCAN_PLUGIN_VERSION;
        *pluginNamespace = avs::kSCAN_PLUGIN_NAMESPACE;
        *outputName = avs::kSCAN_OUTPUT_NAME;
    }

    //! Input `slot`: its name, whether it is optional and whether it is always float32. Returns 1 past the last slot.
    __attribute__((visibility("default"))) int32_t avsScanContractInput(
        int32_t slot, char const** name, int32_t* optional, int32_t* float32)
    {
        if (slot < 0 || slot >= avs::kSCAN_NB_SLOTS)
        {
            return 1;
        }
        *name = avs::kSCAN_INPUT_NAMES[slot];
        *optional = slot >= avs::kSCAN_NB_REQUIRED_INPUTS ? 1 : 0;
        *float32 = avs::scanSlotIsFloat32(slot) ? 1 : 0;
        return 0;
    }

    //! The attribute names, and delta_softplus's default.
    __attribute__((visibility("default"))) void avsScanContractAttributes(char const** deltaSoftplus,
        int32_t* deltaSoftplusDefault, char const** pluginVersion, char const** pluginNamespace)
    {
        *deltaSoftplus = avs::kSCAN_ATTR_DELTA_SOFTPLUS;
        *deltaSoftplusDefault = avs::kSCAN_DELTA_SOFTPLUS_DEFAULT;
        *pluginVersion = avs::kSCAN_ATTR_PLUGIN_VERSION;
        *pluginNamespace = avs::kSCAN_ATTR_PLUGIN_NAMESPACE;
    }

    //! The contract's role rule: present[i] says whether input i has a value; slotInput receives 8 input indices.
    __attribute__((visibility("default"))) int32_t avsScanContractResolveInputs(
        int32_t nbInputs, int32_t const* present, int32_t* slotInput, char* message, int32_t messageSize)
    {
        try
        {
            bool flags[avs::kSCAN_NB_SLOTS]{};
            for (int32_t i = 0; i < std::min(nbInputs, avs::kSCAN_NB_SLOTS); ++i)
            {
                flags[i] = present[i] != 0;
            }
            avs::ScanInputRoles roles;
            std::string const error = avs::resolveScanInputs(nbInputs, flags, roles);
            for (int32_t slot = 0; slot < avs::kSCAN_NB_SLOTS; ++slot)
            {
                slotInput[slot] = roles.input(static_cast<avs::ScanSlot>(slot));
            }
            return report(error, message, messageSize);
        }
        catch (std::exception const& e)
        {
            return report(e.what(), message, messageSize);
        }
    }

    //! 1 if the combination is supported, else 0.
    __attribute__((visibility("default"))) int32_t avsScanLogicSupportsFormat(
        int32_t pos, int32_t nbInputs, int32_t nbOutputs, int32_t const* types, int32_t const* formats)
    {
        try
        {
            return avs::scanSupportsFormat(pos, nbInputs, nbOutputs, types, formats) ? 1 : 0;
        }
        catch (std::exception const&)
        {
            return 0;
        }
    }

    __attribute__((visibility("default"))) int32_t avsScanLogicOutputDims(int32_t nbInputs, int32_t const* ranks,
        int64_t const* dims, int32_t* outRank, int64_t* outDims, char* message, int32_t messageSize)
    {
        try
        {
            avs::ScanInputRoles roles;
            std::string error = avs::resolvePluginInputs(nbInputs, roles);
            if (!error.empty())
            {
                return report(error, message, messageSize);
            }
            avs::ScanTensorDims inputs[avs::kSCAN_NB_SLOTS];
            unpackDims(nbInputs, ranks, dims, inputs);
            avs::ScanTensorDims output;
            error = avs::scanOutputDims(roles, inputs, output);
            *outRank = output.nbDims;
            std::copy(output.d.begin(), output.d.end(), outDims);
            return report(error, message, messageSize);
        }
        catch (std::exception const& e)
        {
            return report(e.what(), message, messageSize);
        }
    }

    //! values receives batch, D, L, N, G, delta_softplus, the ScanDataType; dataType is a kSCAN_TYPE_* number.
    __attribute__((visibility("default"))) int32_t avsScanLogicLaunchParams(int32_t nbInputs, int32_t const* ranks,
        int64_t const* dims, int32_t dataType, int32_t deltaSoftplus, int32_t* values, char* message,
        int32_t messageSize)
    {
        try
        {
            avs::ScanInputRoles roles;
            std::string error = avs::resolvePluginInputs(nbInputs, roles);
            if (!error.empty())
            {
                return report(error, message, messageSize);
            }
            avs::ScanTensorDims inputs[avs::kSCAN_NB_SLOTS];
            unpackDims(nbInputs, ranks, dims, inputs);
            avs::SelectiveScanParams params;
            error = avs::scanLaunchParams(roles, inputs, dataType, avs::ScanPluginAttributes{deltaSoftplus}, params);
            int32_t const filled[] = {params.batch, params.dim, params.seqlen, params.dstate, params.ngroups,
                params.deltaSoftplus ? 1 : 0, static_cast<int32_t>(params.dataType)};
            std::copy(std::begin(filled), std::end(filled), values);
            return report(error, message, messageSize);
        }
        catch (std::exception const& e)
        {
            return report(e.what(), message, messageSize);
        }
    }

    __attribute__((visibility("default"))) int64_t avsScanLogicWorkspaceSize(void)
    {
        return static_cast<int64_t>(avs::kSCAN_WORKSPACE_BYTES);
    }

    __attribute__((visibility("default"))) int32_t avsScanLogicParseFields(int32_t nbFields, char const* const* names,
        int32_t const* types, int32_t const* lengths, void const* const* data, int32_t* deltaSoftplus, char* message,
        int32_t messageSize)
    {
        try
        {
            std::vector<avs::ScanField> fields;
            for (int32_t i = 0; i < nbFields; ++i)
            {
                fields.push_back(avs::ScanField{names[i], data[i], types[i], lengths[i]});
            }
            avs::ScanPluginAttributes attributes;
            std::string const error = avs::parseScanFields(fields.data(), nbFields, attributes);
            *deltaSoftplus = attributes.deltaSoftplus;
            return report(error, message, messageSize);
        }
        catch (std::exception const& e)
        {
            return report(e.what(), message, messageSize);
        }
    }

    //! The serialized field for `deltaSoftplus`: its name, type, length and int32 value.
    __attribute__((visibility("default"))) void avsScanLogicSerializedField(
        int32_t deltaSoftplus, char const** name, int32_t* type, int32_t* length, int32_t* value)
    {
        avs::ScanPluginAttributes const attributes{deltaSoftplus};
        avs::ScanField const field = avs::scanSerializedField(attributes);
        *name = field.name;
        *type = field.type;
        *length = field.length;
        std::memcpy(value, field.data, sizeof(int32_t));
    }

} // extern "C"
