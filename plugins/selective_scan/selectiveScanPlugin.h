// SelectiveScan as a TensorRT IPluginV3 (TensorRT 10.x: JetPack 6's 10.3 and desktop releases) and its creator.
// A thin adapter: roles, shapes and parameters come from selectiveScanContract.h, format and kernel-limit decisions
// from selectiveScanPluginLogic.h, the math from avsSelectiveScanCuda().
// Op contract: README.md beside this file.
#ifndef AVS_SELECTIVE_SCAN_PLUGIN_H
#define AVS_SELECTIVE_SCAN_PLUGIN_H

#include "selectiveScanPluginLogic.h"

#include "NvInferRuntime.h"

#include <cstdint>

namespace avs
{

class SelectiveScanPlugin : public nvinfer1::IPluginV3,
                            public nvinfer1::IPluginV3OneCore,
                            public nvinfer1::IPluginV3OneBuild,
                            public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit SelectiveScanPlugin(ScanPluginAttributes const& attributes);
    SelectiveScanPlugin(SelectiveScanPlugin const& other);
    SelectiveScanPlugin& operator=(SelectiveScanPlugin const&) = delete;
    ~SelectiveScanPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    ScanPluginAttributes mAttributes;
    ScanInputRoles mRoles;       //!< from the latest configurePlugin() / onShapeChange()
    SelectiveScanParams mParams; //!< from the latest onShapeChange(); buffers are bound per enqueue()
    nvinfer1::PluginField mSerializedField;
    nvinfer1::PluginFieldCollection mSerializedFields{};
};

class SelectiveScanPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    SelectiveScanPluginCreator();

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    nvinfer1::PluginField mFieldNames[1];
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Where the plugin's error messages go: TensorRT's logger once setLoggerFinder() has run, stderr before.
void setScanPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

} // namespace avs

#endif // AVS_SELECTIVE_SCAN_PLUGIN_H
