// The avs::SelectiveScan contract in one place, free of TensorRT, ONNX Runtime, torch and CUDA types: the op's
// identity, its input slots and names, how optional inputs get their roles, the shape rules, and how a checked call
// fills SelectiveScanParams. The ONNX Runtime custom op and the TensorRT plugin are adapters over it.
// Python mirror: plugins/scan_contract.py; human-readable: README.md beside this file (tests/test_scan_contract.py
// ties the three together).
#ifndef AVS_SELECTIVE_SCAN_CONTRACT_H
#define AVS_SELECTIVE_SCAN_CONTRACT_H

#include "selectiveScanParams.h"

#include <array>
#include <cstdint>
#include <string>

namespace avs
{

//! The ONNX node: op_type, domain and opset version; TensorRT's parser looks the plugin up by op_type and the
//! plugin_version / plugin_namespace attributes.
constexpr char const* kSCAN_OP_NAME = "SelectiveScan";
constexpr char const* kSCAN_DOMAIN = "avs";
constexpr int32_t kSCAN_OPSET_VERSION = 1;
constexpr char const* kSCAN_PLUGIN_VERSION = "1";
constexpr char const* kSCAN_PLUGIN_NAMESPACE = "avs";

//! Attributes: delta_softplus (INT, 0 or 1, default 0); the two strings are for TensorRT's parser.
constexpr char const* kSCAN_ATTR_DELTA_SOFTPLUS = "delta_softplus";
constexpr int32_t kSCAN_DELTA_SOFTPLUS_DEFAULT = 0;
constexpr char const* kSCAN_ATTR_PLUGIN_VERSION = "plugin_version";
constexpr char const* kSCAN_ATTR_PLUGIN_NAMESPACE = "plugin_namespace";

//! The input slots, in the ONNX node's order. The first kSCAN_NB_REQUIRED_INPUTS are required.
enum class ScanSlot : int32_t
{
    kU = 0,
    kDELTA = 1,
    kA = 2,
    kB = 3,
    kC = 4,
    kD = 5,
    kZ = 6,
    kDELTA_BIAS = 7,
};
constexpr int32_t kSCAN_NB_SLOTS = 8;
constexpr int32_t kSCAN_NB_REQUIRED_INPUTS = 5;
constexpr int32_t kSCAN_NB_OUTPUTS = 1;
constexpr int32_t kSCAN_MAX_RANK = 8;
constexpr char const* kSCAN_INPUT_NAMES[kSCAN_NB_SLOTS] = {"u", "delta", "A", "B", "C", "D", "z", "delta_bias"};
constexpr char const* kSCAN_OUTPUT_NAME = "y";

constexpr char const* scanSlotName(ScanSlot slot)
{
    return kSCAN_INPUT_NAMES[static_cast<int32_t>(slot)];
}

//! A, D and delta_bias are float32 whatever the data type T of u, delta, B, C, z and y.
constexpr bool scanSlotIsFloat32(int32_t slot)
{
    return slot == static_cast<int32_t>(ScanSlot::kA) || slot == static_cast<int32_t>(ScanSlot::kD)
        || slot == static_cast<int32_t>(ScanSlot::kDELTA_BIAS);
}

//! A tensor's dims; an extent of -1 is unknown (TensorRT's build phase).
struct ScanTensorDims
{
    int32_t nbDims{0};
    std::array<int64_t, kSCAN_MAX_RANK> d{};
};

//! Which slots are filled. THE role rule, for every backend: inputs are read by position, input i fills slot i.
//! An omitted optional input is an absent value in its position (an empty name in the ONNX node) or, when it is
//! trailing, no input at all. Ranks never decide a role: a node whose empty names were dropped fails the shape
//! check of the slot its inputs landed in.
struct ScanInputRoles
{
    std::array<bool, kSCAN_NB_SLOTS> present{};
    int32_t nbInputs{0};

    //! The input index of `slot`, or -1 when that optional input is absent.
    int32_t input(ScanSlot slot) const
    {
        int32_t const index = static_cast<int32_t>(slot);
        return present[index] ? index : -1;
    }
};

//! The sizes of a call, read from the input dims; -1 where an extent is unknown.
struct ScanSizes
{
    int64_t batch{-1};
    int64_t dim{-1};
    int64_t length{-1};
    int64_t dstate{-1};
    int64_t groups{-1};
};

//! Roles of `nbInputs` inputs (5 to 8); `present[i]` says whether input i has a value (nullptr: all have one, as
//! for a TensorRT plugin). Returns "" or a message naming the problem.
std::string resolveScanInputs(int32_t nbInputs, bool const* present, ScanInputRoles& roles);

//! Checks the inputs' dims (indexed by input position) against the contract, skipping unknown extents, and fills
//! `sizes`. Returns "" or a message naming the input, the expected and the actual shape.
std::string checkScanInputShapes(ScanInputRoles const& roles, ScanTensorDims const* inputs, ScanSizes& sizes);

//! "" when `value` is a valid delta_softplus attribute (0 or 1), else the message.
std::string checkScanDeltaSoftplus(int64_t value);

//! Fills the sizes and flags of `params` from checked, concrete `sizes` (buffers untouched).
std::string fillScanParams(
    ScanSizes const& sizes, ScanDataType dataType, bool deltaSoftplus, SelectiveScanParams& params);

//! Points `params` at the input buffers (indexed by input position) and the output; absent inputs stay null.
void bindScanBuffers(ScanInputRoles const& roles, void const* const* inputs, void* output, SelectiveScanParams& params);

} // namespace avs

#endif // AVS_SELECTIVE_SCAN_CONTRACT_H
