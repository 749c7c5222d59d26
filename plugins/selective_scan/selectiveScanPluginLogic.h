// Host logic of the SelectiveScan TensorRT plugin, free of TensorRT and CUDA types: format decisions, the CUDA
// kernel's limits on top of the contract's shape rules, the attribute field and the launcher's parameters.
// selectiveScanPlugin.cpp is a thin adapter over it and over selectiveScanContract.h (roles, shapes, parameters).
// Op contract: README.md beside this file.
#ifndef AVS_SELECTIVE_SCAN_PLUGIN_LOGIC_H
#define AVS_SELECTIVE_SCAN_PLUGIN_LOGIC_H

#include "selectiveScanContract.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace avs
{

//! TensorRT's own numbers for DataType::kFLOAT, DataType::kHALF, TensorFormat::kLINEAR and
//! PluginFieldType::kINT32 (selectiveScanPlugin.cpp static_asserts each one against the TensorRT headers).
constexpr int32_t kSCAN_TYPE_FLOAT = 0;
constexpr int32_t kSCAN_TYPE_HALF = 1;
constexpr int32_t kSCAN_FORMAT_LINEAR = 0;
constexpr int32_t kSCAN_FIELD_TYPE_INT32 = 5;
//! The CUDA kernel keeps its carried state in shared memory and needs no workspace.
constexpr size_t kSCAN_WORKSPACE_BYTES = 0;

//! The plugin's attributes.
struct ScanPluginAttributes
{
    int32_t deltaSoftplus{kSCAN_DELTA_SOFTPLUS_DEFAULT};
};

//! One plugin field, as TensorRT's PluginField carries it (type is a PluginFieldType number).
struct ScanField
{
    char const* name;
    void const* data;
    int32_t type;
    int32_t length;
};

//! Roles of a plugin's `nbInputs` inputs: TensorRT hands the plugin only real tensors, so all are present and the
//! contract's positional rule applies as is.
std::string resolvePluginInputs(int32_t nbInputs, ScanInputRoles& roles);

//! supportsFormatCombination for position `pos` (inputs, then the output), using only the types and formats of
//! positions 0..pos: u fp32 or fp16, delta, B, C, z and y of u's type, A, D and delta_bias fp32; all linear.
bool scanSupportsFormat(
    int32_t pos, int32_t nbInputs, int32_t nbOutputs, int32_t const* types, int32_t const* formats);

//! The contract's shape rules (extents of -1 are skipped), then the CUDA kernel's limits.
//! Returns "" or a message that names the input, the expected and the actual shape.
std::string checkScanShapes(ScanInputRoles const& roles, ScanTensorDims const* inputs, ScanSizes& sizes);

//! The output's dims (those of u) after checkScanShapes().
std::string scanOutputDims(ScanInputRoles const& roles, ScanTensorDims const* inputs, ScanTensorDims& output);

//! Fills everything in `params` but the buffers from concrete dims (run time), input 0's type and the attributes.
std::string scanLaunchParams(ScanInputRoles const& roles, ScanTensorDims const* inputs, int32_t dataType,
    ScanPluginAttributes const& attributes, SelectiveScanParams& params);

//! Reads the fields of createPlugin (build phase: the ONNX node's attributes; run time: what
//! scanSerializedField() wrote). Unknown names are ignored; a missing delta_softplus keeps the default 0.
std::string parseScanFields(ScanField const* fields, int32_t nbFields, ScanPluginAttributes& attributes);

//! The field getFieldsToSerialize() writes; it points into `attributes`, which must outlive it.
ScanField scanSerializedField(ScanPluginAttributes const& attributes);

} // namespace avs

#endif // AVS_SELECTIVE_SCAN_PLUGIN_LOGIC_H
