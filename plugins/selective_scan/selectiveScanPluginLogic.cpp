// Host logic of the SelectiveScan TensorRT plugin (see the header) and its C ABI for tests.
#include "selectiveScanPluginLogic.h"

#include "selectiveScanKernel.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <sstream>
#include <vector>

namespace avs
{
namespace
{

constexpr char const* kSLOT_NAMES[kSCAN_NB_SLOTS] = {"u", "delta", "A", "B", "C", "D", "z", "delta_bias"};
constexpr int64_t kUNKNOWN = -1;

char const* slotName(ScanSlot slot)
{
    return kSLOT_NAMES[static_cast<int32_t>(slot)];
}

//! Slots of inputs 0..count-1 from their ranks; `count` may stop short of the node's input count.
std::string assignSlots(int32_t count, int32_t const* ranks, ScanInputRoles& roles)
{
    roles = ScanInputRoles{};
    roles.nbInputs = count;
    int32_t next = static_cast<int32_t>(ScanSlot::kD); // the earliest slot the next optional input may fill
    for (int32_t i = 0; i < count; ++i)
    {
        int32_t slot = i;
        if (i >= kSCAN_NB_REQUIRED_INPUTS)
        {
            int32_t const rank = ranks[i];
            if (rank == 3 && next <= static_cast<int32_t>(ScanSlot::kZ))
            {
                slot = static_cast<int32_t>(ScanSlot::kZ);
            }
            else if (rank == 1 && next <= static_cast<int32_t>(ScanSlot::kD))
            {
                slot = static_cast<int32_t>(ScanSlot::kD);
            }
            else if (rank == 1 && next <= static_cast<int32_t>(ScanSlot::kDELTA_BIAS))
            {
                slot = static_cast<int32_t>(ScanSlot::kDELTA_BIAS);
            }
            else
            {
                std::ostringstream msg;
                msg << "SelectiveScan: input " << i << " has rank " << rank << ", which fits no optional slot left "
                    << "after the earlier ones; optional inputs are D (D,), z (batch, D, L) and delta_bias (D,), in "
                       "that order. An empty optional input name before a present one cannot reach a TensorRT "
                       "plugin: drop the empty name, or pass zeros for D";
                return msg.str();
            }
            next = slot + 1;
        }
        roles.slotInput[slot] = i;
        roles.inputSlot[i] = slot;
    }
    return {};
}

std::string formatDims(ScanTensorDims const& dims)
{
    std::ostringstream out;
    out << "(";
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        out << (i ? ", " : "");
        if (dims.d[i] < 0)
        {
            out << "?";
        }
        else
        {
            out << dims.d[i];
        }
    }
    out << (dims.nbDims == 1 ? ",)" : ")");
    return out.str();
}

bool sameExtent(int64_t a, int64_t b)
{
    return a < 0 || b < 0 || a == b;
}

//! Whether `dims` matches `expected` (rank equal, known extents equal).
bool matches(ScanTensorDims const& dims, ScanTensorDims const& expected)
{
    if (dims.nbDims != expected.nbDims)
    {
        return false;
    }
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        if (!sameExtent(dims.d[i], expected.d[i]))
        {
            return false;
        }
    }
    return true;
}

ScanTensorDims makeDims(std::initializer_list<int64_t> extents)
{
    ScanTensorDims dims;
    for (int64_t extent : extents)
    {
        dims.d[dims.nbDims++] = extent;
    }
    return dims;
}

std::string shapeMessage(ScanSlot slot, std::string const& expected, ScanTensorDims const& actual)
{
    return std::string("SelectiveScan: ") + slotName(slot) + " must be " + expected + ", got " + formatDims(actual);
}

//! Known extents of the first dims that matter, or kUNKNOWN.
struct ScanSizes
{
    int64_t batch{kUNKNOWN};
    int64_t dim{kUNKNOWN};
    int64_t length{kUNKNOWN};
    int64_t dstate{kUNKNOWN};
    int64_t groups{kUNKNOWN};
};

std::string checkShapes(ScanInputRoles const& roles, ScanTensorDims const* inputs, ScanSizes& sizes)
{
    if (roles.nbInputs < kSCAN_NB_REQUIRED_INPUTS)
    {
        return "SelectiveScan: roles were not resolved";
    }
    ScanTensorDims const& u = inputs[roles.input(ScanSlot::kU)];
    if (u.nbDims != 3)
    {
        return shapeMessage(ScanSlot::kU, "(batch, D, L)", u);
    }
    sizes.batch = u.d[0];
    sizes.dim = u.d[1];
    sizes.length = u.d[2];
    if (sizes.length == 0)
    {
        return "SelectiveScan: L = 0 (empty sequence); the scan needs at least one step";
    }
    if (sizes.batch == 0 || sizes.dim == 0)
    {
        return "SelectiveScan: u " + formatDims(u) + " is empty; batch and D must be positive";
    }
    std::string const dataShape = "(batch, D, L) = " + formatDims(u) + " like u";
    for (ScanSlot slot : {ScanSlot::kDELTA, ScanSlot::kZ})
    {
        int32_t const index = roles.input(slot);
        if (index >= 0 && !matches(inputs[index], u))
        {
            return shapeMessage(slot, dataShape, inputs[index]);
        }
    }
    ScanTensorDims const& a = inputs[roles.input(ScanSlot::kA)];
    if (a.nbDims != 2 || !sameExtent(a.d[0], sizes.dim))
    {
        return shapeMessage(ScanSlot::kA, "(D, N) with D = " + std::to_string(sizes.dim), a);
    }
    sizes.dstate = a.d[1];
    if (sizes.dstate == 0)
    {
        return "SelectiveScan: N = 0 (A has no state columns); N must be positive";
    }
    if (sizes.dstate > kSCAN_CUDA_MAX_DSTATE)
    {
        return "SelectiveScan: N = " + std::to_string(sizes.dstate) + " exceeds the CUDA kernel's limit of "
            + std::to_string(kSCAN_CUDA_MAX_DSTATE) + " states";
    }
    ScanTensorDims const& b = inputs[roles.input(ScanSlot::kB)];
    ScanTensorDims const ungrouped = makeDims({sizes.batch, sizes.dstate, sizes.length});
    std::string const bcShape = "(batch, N, L) = " + formatDims(ungrouped) + " or (batch, G, N, L) = "
        + formatDims(makeDims({sizes.batch, kUNKNOWN, sizes.dstate, sizes.length}));
    if (b.nbDims == 3)
    {
        sizes.groups = 1;
    }
    else if (b.nbDims == 4)
    {
        sizes.groups = b.d[1];
    }
    ScanTensorDims const expectedBc
        = b.nbDims == 4 ? makeDims({sizes.batch, sizes.groups, sizes.dstate, sizes.length}) : ungrouped;
    for (ScanSlot slot : {ScanSlot::kB, ScanSlot::kC})
    {
        ScanTensorDims const& t = inputs[roles.input(slot)];
        if ((b.nbDims != 3 && b.nbDims != 4) || !matches(t, expectedBc))
        {
            return shapeMessage(slot, bcShape + (slot == ScanSlot::kC ? ", like B " + formatDims(b) : ""), t);
        }
    }
    if (sizes.groups == 0 || (sizes.groups > 0 && sizes.dim > 0 && sizes.dim % sizes.groups != 0))
    {
        return "SelectiveScan: B and C have G = " + std::to_string(sizes.groups) + " groups, which does not divide D = "
            + std::to_string(sizes.dim);
    }
    for (ScanSlot slot : {ScanSlot::kD, ScanSlot::kDELTA_BIAS})
    {
        int32_t const index = roles.input(slot);
        if (index >= 0 && !matches(inputs[index], makeDims({sizes.dim})))
        {
            return shapeMessage(slot, "(D,) = " + formatDims(makeDims({sizes.dim})), inputs[index]);
        }
    }
    if (sizes.batch > 0 && sizes.dim > 0 && sizes.batch * sizes.dim > std::numeric_limits<int32_t>::max())
    {
        return "SelectiveScan: batch * D = " + std::to_string(sizes.batch * sizes.dim)
            + " rows exceed the CUDA kernel's grid limit of 2^31 - 1";
    }
    if (sizes.length > std::numeric_limits<int32_t>::max())
    {
        return "SelectiveScan: L = " + std::to_string(sizes.length) + " exceeds 2^31 - 1";
    }
    return {};
}

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

void unpackDims(int32_t nbInputs, int32_t const* ranks, int64_t const* dims, ScanTensorDims* out)
{
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        out[i].nbDims = std::clamp(ranks[i], 0, kSCAN_MAX_RANK);
        std::copy(dims + i * kSCAN_MAX_RANK, dims + (i + 1) * kSCAN_MAX_RANK, out[i].d.begin());
    }
}

} // namespace

std::string resolveScanInputRoles(int32_t nbInputs, int32_t const* ranks, ScanInputRoles& roles)
{
    if (nbInputs < kSCAN_NB_REQUIRED_INPUTS || nbInputs > kSCAN_NB_SLOTS)
    {
        return "SelectiveScan: expected 5 to 8 inputs (u, delta, A, B, C[, D][, z][, delta_bias]), got "
            + std::to_string(nbInputs);
    }
    return assignSlots(nbInputs, ranks, roles);
}

bool scanSupportsFormat(int32_t pos, int32_t nbInputs, int32_t nbOutputs, int32_t const* ranks,
    int32_t const* types, int32_t const* formats)
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
    if (pos >= nbInputs) // the output y
    {
        return types[pos] == types[0];
    }
    ScanInputRoles roles;
    if (!assignSlots(pos + 1, ranks, roles).empty())
    {
        return false;
    }
    switch (static_cast<ScanSlot>(roles.inputSlot[pos]))
    {
    case ScanSlot::kA:
    case ScanSlot::kD:
    case ScanSlot::kDELTA_BIAS: return types[pos] == kSCAN_TYPE_FLOAT;
    case ScanSlot::kU:
    case ScanSlot::kDELTA:
    case ScanSlot::kB:
    case ScanSlot::kC:
    case ScanSlot::kZ: return types[pos] == types[0];
    }
    return false;
}

std::string checkScanShapes(ScanInputRoles const& roles, ScanTensorDims const* inputs)
{
    ScanSizes sizes;
    return checkShapes(roles, inputs, sizes);
}

std::string scanOutputDims(ScanInputRoles const& roles, ScanTensorDims const* inputs, ScanTensorDims& output)
{
    std::string message = checkScanShapes(roles, inputs);
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
    std::string message = checkShapes(roles, inputs, sizes);
    if (!message.empty())
    {
        return message;
    }
    for (int64_t extent : {sizes.batch, sizes.dim, sizes.length, sizes.dstate, sizes.groups})
    {
        if (extent < 0 || extent > std::numeric_limits<int32_t>::max())
        {
            return "SelectiveScan: run-time dims must be concrete, got u " + formatDims(inputs[0]);
        }
    }
    if (dataType != kSCAN_TYPE_FLOAT && dataType != kSCAN_TYPE_HALF)
    {
        return "SelectiveScan: u must be fp32 or fp16, got TensorRT DataType " + std::to_string(dataType);
    }
    params.batch = static_cast<int32_t>(sizes.batch);
    params.dim = static_cast<int32_t>(sizes.dim);
    params.seqlen = static_cast<int32_t>(sizes.length);
    params.dstate = static_cast<int32_t>(sizes.dstate);
    params.ngroups = static_cast<int32_t>(sizes.groups);
    params.deltaSoftplus = attributes.deltaSoftplus != 0;
    params.dataType = dataType == kSCAN_TYPE_HALF ? ScanDataType::kFLOAT16 : ScanDataType::kFLOAT32;
    return {};
}

void bindScanBuffers(ScanInputRoles const& roles, void const* const* inputs, void* output, SelectiveScanParams& params)
{
    auto buffer = [&](ScanSlot slot) -> void const* {
        int32_t const index = roles.input(slot);
        return index < 0 ? nullptr : inputs[index];
    };
    params.u = buffer(ScanSlot::kU);
    params.delta = buffer(ScanSlot::kDELTA);
    params.A = static_cast<float const*>(buffer(ScanSlot::kA));
    params.B = buffer(ScanSlot::kB);
    params.C = buffer(ScanSlot::kC);
    params.D = static_cast<float const*>(buffer(ScanSlot::kD));
    params.z = buffer(ScanSlot::kZ);
    params.deltaBias = static_cast<float const*>(buffer(ScanSlot::kDELTA_BIAS));
    params.y = output;
}

std::string parseScanFields(ScanField const* fields, int32_t nbFields, ScanPluginAttributes& attributes)
{
    attributes = ScanPluginAttributes{};
    for (int32_t i = 0; i < nbFields; ++i)
    {
        ScanField const& field = fields[i];
        if (field.name == nullptr || std::strcmp(field.name, kSCAN_FIELD_DELTA_SOFTPLUS) != 0)
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
        if (value != 0 && value != 1)
        {
            return "SelectiveScan: delta_softplus must be 0 or 1, got " + std::to_string(value);
        }
        attributes.deltaSoftplus = value;
    }
    return {};
}

ScanField scanSerializedField(ScanPluginAttributes const& attributes)
{
    return ScanField{kSCAN_FIELD_DELTA_SOFTPLUS, &attributes.deltaSoftplus, kSCAN_FIELD_TYPE_INT32, 1};
}

} // namespace avs

extern "C"
{

    void avsScanLogicIdentity(
        char const** name, char const** version, char const** pluginNamespace, char const** softplusField)
    {
        *name = avs::kSCAN_PLUGIN_NAME;
        *version = avs::kSCAN_PLUGIN_VERSION;
        *pluginNamespace = avs::kSCAN_PLUGIN_NAMESPACE;
        *softplusField = avs::kSCAN_FIELD_DELTA_SOFTPLUS;
    }

    int32_t avsScanLogicResolveRoles(
        int32_t nbInputs, int32_t const* ranks, int32_t* slotInput, char* message, int32_t messageSize)
    {
        try
        {
            avs::ScanInputRoles roles;
            std::string const error = avs::resolveScanInputRoles(nbInputs, ranks, roles);
            int32_t const status = avs::report(error, message, messageSize);
            std::copy(roles.slotInput.begin(), roles.slotInput.end(), slotInput);
            return status;
        }
        catch (std::exception const& e)
        {
            return avs::report(e.what(), message, messageSize);
        }
    }

    int32_t avsScanLogicSupportsFormat(int32_t pos, int32_t nbInputs, int32_t nbOutputs, int32_t const* ranks,
        int32_t const* types, int32_t const* formats)
    {
        try
        {
            return avs::scanSupportsFormat(pos, nbInputs, nbOutputs, ranks, types, formats) ? 1 : 0;
        }
        catch (std::exception const&)
        {
            return 0;
        }
    }

    int32_t avsScanLogicOutputDims(int32_t nbInputs, int32_t const* ranks, int64_t const* dims, int32_t* outRank,
        int64_t* outDims, char* message, int32_t messageSize)
    {
        try
        {
            avs::ScanInputRoles roles;
            std::string error = avs::resolveScanInputRoles(nbInputs, ranks, roles);
            if (!error.empty())
            {
                return avs::report(error, message, messageSize);
            }
            avs::ScanTensorDims inputs[avs::kSCAN_NB_SLOTS];
            avs::unpackDims(nbInputs, ranks, dims, inputs);
            avs::ScanTensorDims output;
            error = avs::scanOutputDims(roles, inputs, output);
            *outRank = output.nbDims;
            std::copy(output.d.begin(), output.d.end(), outDims);
            return avs::report(error, message, messageSize);
        }
        catch (std::exception const& e)
        {
            return avs::report(e.what(), message, messageSize);
        }
    }

    int32_t avsScanLogicLaunchParams(int32_t nbInputs, int32_t const* ranks, int64_t const* dims, int32_t dataType,
        int32_t deltaSoftplus, int32_t* values, char* message, int32_t messageSize)
    {
        try
        {
            avs::ScanInputRoles roles;
            std::string error = avs::resolveScanInputRoles(nbInputs, ranks, roles);
            if (!error.empty())
            {
                return avs::report(error, message, messageSize);
            }
            avs::ScanTensorDims inputs[avs::kSCAN_NB_SLOTS];
            avs::unpackDims(nbInputs, ranks, dims, inputs);
            avs::SelectiveScanParams params;
            error = avs::scanLaunchParams(roles, inputs, dataType, avs::ScanPluginAttributes{deltaSoftplus}, params);
            int32_t const filled[] = {params.batch, params.dim, params.seqlen, params.dstate, params.ngroups,
                params.deltaSoftplus ? 1 : 0, static_cast<int32_t>(params.dataType)};
            std::copy(std::begin(filled), std::end(filled), values);
            return avs::report(error, message, messageSize);
        }
        catch (std::exception const& e)
        {
            return avs::report(e.what(), message, messageSize);
        }
    }

    int64_t avsScanLogicWorkspaceSize(void)
    {
        return static_cast<int64_t>(avs::kSCAN_WORKSPACE_BYTES);
    }

    int32_t avsScanLogicParseFields(int32_t nbFields, char const* const* names, int32_t const* types,
        int32_t const* lengths, void const* const* data, int32_t* deltaSoftplus, char* message, int32_t messageSize)
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
            return avs::report(error, message, messageSize);
        }
        catch (std::exception const& e)
        {
            return avs::report(e.what(), message, messageSize);
        }
    }

    void avsScanLogicSerializedField(
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
