// The avs::SelectiveScan contract (see the header): role resolution, shape rules, parameter filling.
#include "selectiveScanContract.h"

#include <initializer_list>
#include <limits>
#include <sstream>

namespace avs
{
namespace
{

constexpr int64_t kUNKNOWN = -1;
constexpr int64_t kINT32_MAX = std::numeric_limits<int32_t>::max();

bool sameExtent(int64_t a, int64_t b)
{
    return a < 0 || b < 0 || a == b;
}

//! Rank equal and every known extent equal.
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

//! "(2, 8, 5)", "(8,)", with "?" for an unknown extent.
std::string formatScanDims(ScanTensorDims const& dims)
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

std::string shapeMessage(ScanSlot slot, std::string const& expected, ScanTensorDims const& actual)
{
    return std::string("SelectiveScan: input '") + scanSlotName(slot) + "' must be " + expected + ", got "
        + formatScanDims(actual);
}

//! A rank-1 tensor in z's slot is what a node with a dropped empty name (D, "", delta_bias) looks like.
std::string positionalHint(ScanSlot slot, ScanTensorDims const& actual)
{
    if (slot != ScanSlot::kZ || actual.nbDims != 1)
    {
        return {};
    }
    return "; inputs are read by position (u, delta, A, B, C, D, z, delta_bias): an omitted optional input before "
           "a present one is an empty name, and for TensorRT, which cannot take one, fold delta_bias into delta "
           "as the exporter does";
}

} // namespace

std::string resolveScanInputs(int32_t nbInputs, bool const* present, ScanInputRoles& roles)
{
    roles = ScanInputRoles{};
    if (nbInputs < kSCAN_NB_REQUIRED_INPUTS || nbInputs > kSCAN_NB_SLOTS)
    {
        return "SelectiveScan: expected 5 to 8 inputs (u, delta, A, B, C[, D][, z][, delta_bias]), got "
            + std::to_string(nbInputs);
    }
    roles.nbInputs = nbInputs;
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        roles.present[i] = present == nullptr || present[i];
        if (!roles.present[i] && i < kSCAN_NB_REQUIRED_INPUTS)
        {
            return std::string("SelectiveScan: input '") + kSCAN_INPUT_NAMES[i] + "' is required";
        }
    }
    return {};
}

std::string checkScanInputShapes(ScanInputRoles const& roles, ScanTensorDims const* inputs, ScanSizes& sizes)
{
    sizes = ScanSizes{};
    if (roles.nbInputs < kSCAN_NB_REQUIRED_INPUTS)
    {
        return "SelectiveScan: input roles were not resolved";
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
        return "SelectiveScan: L = 0 (empty sequence, u is " + formatScanDims(u)
            + "); the scan needs at least one step";
    }
    if (sizes.batch == 0 || sizes.dim == 0)
    {
        return "SelectiveScan: input 'u' " + formatScanDims(u) + " is empty; batch and D must be positive";
    }
    std::string const dataShape = "(batch, D, L) = " + formatScanDims(u) + " like u";
    for (ScanSlot slot : {ScanSlot::kDELTA, ScanSlot::kZ})
    {
        int32_t const index = roles.input(slot);
        if (index >= 0 && !matches(inputs[index], u))
        {
            return shapeMessage(slot, dataShape, inputs[index]) + positionalHint(slot, inputs[index]);
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
        return "SelectiveScan: N = 0 (input 'A' is " + formatScanDims(a) + "); N must be positive";
    }
    ScanTensorDims const& b = inputs[roles.input(ScanSlot::kB)];
    ScanTensorDims const ungrouped = makeDims({sizes.batch, sizes.dstate, sizes.length});
    std::string const bcShape = "(batch, N, L) = " + formatScanDims(ungrouped) + " or (batch, G, N, L) = "
        + formatScanDims(makeDims({sizes.batch, kUNKNOWN, sizes.dstate, sizes.length})) + " with G dividing D";
    if (b.nbDims == 3 || b.nbDims == 4)
    {
        sizes.groups = b.nbDims == 4 ? b.d[1] : 1;
    }
    ScanTensorDims const expectedBc
        = b.nbDims == 4 ? makeDims({sizes.batch, sizes.groups, sizes.dstate, sizes.length}) : ungrouped;
    for (ScanSlot slot : {ScanSlot::kB, ScanSlot::kC})
    {
        ScanTensorDims const& t = inputs[roles.input(slot)];
        if ((b.nbDims != 3 && b.nbDims != 4) || !matches(t, expectedBc))
        {
            return shapeMessage(slot, bcShape + (slot == ScanSlot::kC ? ", like B " + formatScanDims(b) : ""), t);
        }
    }
    if (sizes.groups == 0 || (sizes.groups > 0 && sizes.dim > 0 && sizes.dim % sizes.groups != 0))
    {
        return "SelectiveScan: B and C have G = " + std::to_string(sizes.groups) + " groups, which does not divide D = "
            + std::to_string(sizes.dim);
    }
    ScanTensorDims const perChannel = makeDims({sizes.dim});
    for (ScanSlot slot : {ScanSlot::kD, ScanSlot::kDELTA_BIAS})
    {
        int32_t const index = roles.input(slot);
        if (index >= 0 && !matches(inputs[index], perChannel))
        {
            return shapeMessage(slot, "(D,) = " + formatScanDims(perChannel), inputs[index]);
        }
    }
    for (int64_t extent : {sizes.batch, sizes.dim, sizes.length, sizes.dstate})
    {
        if (extent > kINT32_MAX)
        {
            return "SelectiveScan: u " + formatScanDims(u) + " or A " + formatScanDims(a)
                + " has a dimension above 2^31 - 1";
        }
    }
    return {};
}

std::string checkScanDeltaSoftplus(int64_t value)
{
    if (value != 0 && value != 1)
    {
        return std::string("SelectiveScan: attribute '") + kSCAN_ATTR_DELTA_SOFTPLUS + "' must be 0 or 1, got "
            + std::to_string(value);
    }
    return {};
}

std::string fillScanParams(
    ScanSizes const& sizes, ScanDataType dataType, bool deltaSoftplus, SelectiveScanParams& params)
{
    for (int64_t extent : {sizes.batch, sizes.dim, sizes.length, sizes.dstate, sizes.groups})
    {
        if (extent < 0 || extent > kINT32_MAX)
        {
            return "SelectiveScan: run-time dims must be concrete, got batch " + std::to_string(sizes.batch) + ", D "
                + std::to_string(sizes.dim) + ", L " + std::to_string(sizes.length) + ", N "
                + std::to_string(sizes.dstate) + ", G " + std::to_string(sizes.groups);
        }
    }
    params.batch = static_cast<int32_t>(sizes.batch);
    params.dim = static_cast<int32_t>(sizes.dim);
    params.seqlen = static_cast<int32_t>(sizes.length);
    params.dstate = static_cast<int32_t>(sizes.dstate);
    params.ngroups = static_cast<int32_t>(sizes.groups);
    params.deltaSoftplus = deltaSoftplus;
    params.dataType = dataType;
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

} // namespace avs
