// Host logic of the SelectiveScan TensorRT plugin, free of TensorRT and CUDA types: input roles, format
// decisions, shape checks, the attribute field and the launcher's sizes. selectiveScanPlugin.cpp is a thin
// adapter over it; the avsScanLogic* C functions at the end expose the same logic to Python tests (ctypes).
// Op contract: README.md beside this file.
#ifndef AVS_SELECTIVE_SCAN_PLUGIN_LOGIC_H
#define AVS_SELECTIVE_SCAN_PLUGIN_LOGIC_H

#include "selectiveScanParams.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace avs
{

//! What TensorRT's ONNX parser looks up: op_type, the plugin_version attribute, the plugin_namespace attribute.
constexpr char const* kSCAN_PLUGIN_NAME = "SelectiveScan";
constexpr char const* kSCAN_PLUGIN_VERSION = "1";
constexpr char const* kSCAN_PLUGIN_NAMESPACE = "avs";
//! The one plugin field: the node's INT attribute, which the parser hands over as an INT32 field of length 1.
constexpr char const* kSCAN_FIELD_DELTA_SOFTPLUS = "delta_softplus";

//! TensorRT's own numbers for DataType::kFLOAT, DataType::kHALF, TensorFormat::kLINEAR and
//! PluginFieldType::kINT32 (selectiveScanPlugin.cpp static_asserts each one against the TensorRT headers).
constexpr int32_t kSCAN_TYPE_FLOAT = 0;
constexpr int32_t kSCAN_TYPE_HALF = 1;
constexpr int32_t kSCAN_FORMAT_LINEAR = 0;
constexpr int32_t kSCAN_FIELD_TYPE_INT32 = 5;

//! The op's input slots, in the ONNX node's order.
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
//! The CUDA kernel keeps its carried state in shared memory and needs no workspace.
constexpr size_t kSCAN_WORKSPACE_BYTES = 0;

//! Which plugin input fills each slot (-1: an optional input that is absent), and the reverse map.
struct ScanInputRoles
{
    std::array<int32_t, kSCAN_NB_SLOTS> slotInput{-1, -1, -1, -1, -1, -1, -1, -1};
    std::array<int32_t, kSCAN_NB_SLOTS> inputSlot{-1, -1, -1, -1, -1, -1, -1, -1};
    int32_t nbInputs{0};

    int32_t input(ScanSlot slot) const
    {
        return slotInput[static_cast<int32_t>(slot)];
    }
};

//! A tensor's dims as TensorRT reports them; an extent of -1 is unknown until run time.
struct ScanTensorDims
{
    int32_t nbDims{0};
    std::array<int64_t, kSCAN_MAX_RANK> d{};
};

//! The plugin's attributes.
struct ScanPluginAttributes
{
    int32_t deltaSoftplus{0};
};

//! One plugin field, as TensorRT's PluginField carries it (type is a PluginFieldType number).
struct ScanField
{
    char const* name;
    void const* data;
    int32_t type;
    int32_t length;
};

//! Assigns slots to `nbInputs` (5 to 8) inputs from their ranks. The first five are u, delta, A, B, C. The rest
//! are the present optional inputs in slot order: a rank-3 one is z, a rank-1 one before z or first is D, a
//! rank-1 one after D or z is delta_bias. This equals ONNX's positional reading when no name is empty and also
//! reads a node whose empty optional inputs were dropped, except a lone delta_bias, which reads as D.
//! Returns "" or a message naming the problem.
std::string resolveScanInputRoles(int32_t nbInputs, int32_t const* ranks, ScanInputRoles& roles);

//! supportsFormatCombination for position `pos` (inputs, then the output), using only the ranks, types and
//! formats of positions 0..pos: u fp32 or fp16, delta, B, C, z and y of u's type, A, D and delta_bias fp32;
//! all linear.
bool scanSupportsFormat(int32_t pos, int32_t nbInputs, int32_t nbOutputs, int32_t const* ranks,
    int32_t const* types, int32_t const* formats);

//! Checks the inputs' dims against the contract (extents of -1 are skipped) and the kernel's limits.
//! Returns "" or a message that names the input, the expected and the actual shape.
std::string checkScanShapes(ScanInputRoles const& roles, ScanTensorDims const* inputs);

//! The output's dims (those of u) after checkScanShapes().
std::string scanOutputDims(ScanInputRoles const& roles, ScanTensorDims const* inputs, ScanTensorDims& output);

//! Fills everything in `params` but the buffers from concrete dims (run time), input 0's type and the attributes.
std::string scanLaunchParams(ScanInputRoles const& roles, ScanTensorDims const* inputs, int32_t dataType,
    ScanPluginAttributes const& attributes, SelectiveScanParams& params);

//! Points `params` at the plugin's input and output buffers, optional ones left null when absent.
void bindScanBuffers(ScanInputRoles const& roles, void const* const* inputs, void* output, SelectiveScanParams& params);

//! Reads the fields of createPlugin (build phase: the ONNX node's attributes; run time: what
//! scanSerializedField() wrote). Unknown names are ignored; a missing delta_softplus keeps the default 0.
std::string parseScanFields(ScanField const* fields, int32_t nbFields, ScanPluginAttributes& attributes);

//! The field getFieldsToSerialize() writes; it points into `attributes`, which must outlive it.
ScanField scanSerializedField(ScanPluginAttributes const& attributes);

} // namespace avs

// C ABI of libavs_scan_plugin_logic.so, for tests. Messages are NUL-terminated and truncated to messageSize.
// Dims arrays hold kSCAN_MAX_RANK int64 extents per input. Return 0 on success, 1 with a message otherwise.
extern "C"
{
    void avsScanLogicIdentity(char const** name, char const** version, char const** pluginNamespace,
        char const** softplusField);
    int32_t avsScanLogicResolveRoles(
        int32_t nbInputs, int32_t const* ranks, int32_t* slotInput, char* message, int32_t messageSize);
    //! 1 if the combination is supported, else 0.
    int32_t avsScanLogicSupportsFormat(int32_t pos, int32_t nbInputs, int32_t nbOutputs, int32_t const* ranks,
        int32_t const* types, int32_t const* formats);
    int32_t avsScanLogicOutputDims(int32_t nbInputs, int32_t const* ranks, int64_t const* dims, int32_t* outRank,
        int64_t* outDims, char* message, int32_t messageSize);
    //! values receives batch, D, L, N, G, delta_softplus, the ScanDataType; dataType is a kSCAN_TYPE_* number.
    int32_t avsScanLogicLaunchParams(int32_t nbInputs, int32_t const* ranks, int64_t const* dims, int32_t dataType,
        int32_t deltaSoftplus, int32_t* values, char* message, int32_t messageSize);
    int64_t avsScanLogicWorkspaceSize(void);
    int32_t avsScanLogicParseFields(int32_t nbFields, char const* const* names, int32_t const* types,
        int32_t const* lengths, void const* const* data, int32_t* deltaSoftplus, char* message, int32_t messageSize);
    //! The serialized field for `deltaSoftplus`: its name, type, length and int32 value.
    void avsScanLogicSerializedField(
        int32_t deltaSoftplus, char const** name, int32_t* type, int32_t* length, int32_t* value);
}

#endif // AVS_SELECTIVE_SCAN_PLUGIN_LOGIC_H
