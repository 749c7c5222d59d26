// SelectiveScan IPluginV3 and its creator: each override checks with the plugin logic, reports a problem through
// TensorRT's logger and returns an error value; no exception leaves a noexcept method.
#include "selectiveScanPlugin.h"

#include "selectiveScanKernel.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

namespace avs
{

static_assert(static_cast<int32_t>(nvinfer1::DataType::kFLOAT) == kSCAN_TYPE_FLOAT, "DataType::kFLOAT changed");
static_assert(static_cast<int32_t>(nvinfer1::DataType::kHALF) == kSCAN_TYPE_HALF, "DataType::kHALF changed");
static_assert(static_cast<int32_t>(nvinfer1::TensorFormat::kLINEAR) == kSCAN_FORMAT_LINEAR, "kLINEAR changed");
static_assert(static_cast<int32_t>(nvinfer1::PluginFieldType::kINT32) == kSCAN_FIELD_TYPE_INT32, "kINT32 changed");
static_assert(nvinfer1::Dims::MAX_DIMS == kSCAN_MAX_RANK, "Dims::MAX_DIMS changed");

namespace
{

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

void logError(char const* message) noexcept
{
    nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
    nvinfer1::ILogger* logger = finder == nullptr ? nullptr : finder->findLogger();
    if (logger != nullptr)
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, message);
    }
    else
    {
        std::cerr << "[avs_trt_plugins] " << message << std::endl;
    }
}

//! Logs a non-empty message and says whether there was one.
bool failed(std::string const& message) noexcept
{
    if (message.empty())
    {
        return false;
    }
    logError(message.c_str());
    return true;
}

void logException(std::exception const& e) noexcept
{
    logError((std::string("SelectiveScan: ") + e.what()).c_str());
}

ScanTensorDims toScanDims(nvinfer1::Dims const& dims)
{
    ScanTensorDims out;
    out.nbDims = dims.nbDims;
    for (int32_t i = 0; i < dims.nbDims && i < kSCAN_MAX_RANK; ++i)
    {
        out.d[i] = dims.d[i];
    }
    return out;
}

//! Build-time dims: a constant expression gives its value, anything else -1 (unknown).
ScanTensorDims toScanDims(nvinfer1::DimsExprs const& dims)
{
    ScanTensorDims out;
    out.nbDims = dims.nbDims;
    for (int32_t i = 0; i < dims.nbDims && i < kSCAN_MAX_RANK; ++i)
    {
        out.d[i] = dims.d[i]->isConstant() ? dims.d[i]->getConstantValue() : -1;
    }
    return out;
}

//! Roles of the inputs (the contract's positional rule) and their checked dims, from any TensorRT description.
template <typename Desc, typename GetDims>
std::string resolveAndCheck(
    Desc const* descs, int32_t nbInputs, GetDims getDims, ScanInputRoles& roles, ScanTensorDims (&dims)[kSCAN_NB_SLOTS])
{
    std::string message = resolvePluginInputs(nbInputs, roles);
    if (!message.empty())
    {
        return message;
    }
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        dims[i] = toScanDims(getDims(descs[i]));
    }
    ScanSizes sizes;
    return checkScanShapes(roles, dims, sizes);
}

} // namespace

void setScanPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

SelectiveScanPlugin::SelectiveScanPlugin(ScanPluginAttributes const& attributes)
    : mAttributes(attributes)
{
}

SelectiveScanPlugin::SelectiveScanPlugin(SelectiveScanPlugin const& other)
    : mAttributes(other.mAttributes)
    , mRoles(other.mRoles)
    , mParams(other.mParams)
{
}

nvinfer1::IPluginCapability* SelectiveScanPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* SelectiveScanPlugin::clone() noexcept
{
    try
    {
        return new SelectiveScanPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logException(e);
    }
    return nullptr;
}

char const* SelectiveScanPlugin::getPluginName() const noexcept
{
    return kSCAN_OP_NAME;
}

char const* SelectiveScanPlugin::getPluginVersion() const noexcept
{
    return kSCAN_PLUGIN_VERSION;
}

char const* SelectiveScanPlugin::getPluginNamespace() const noexcept
{
    return kSCAN_PLUGIN_NAMESPACE;
}

int32_t SelectiveScanPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /* out */, int32_t nbOutputs) noexcept
{
    try
    {
        ScanTensorDims dims[kSCAN_NB_SLOTS];
        auto const getDims = [](nvinfer1::DynamicPluginTensorDesc const& desc) { return desc.desc.dims; };
        if (nbOutputs != kSCAN_NB_OUTPUTS || failed(resolveAndCheck(in, nbInputs, getDims, mRoles, dims)))
        {
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logException(e);
    }
    return -1;
}

int32_t SelectiveScanPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        if (nbOutputs != kSCAN_NB_OUTPUTS || nbInputs < kSCAN_NB_REQUIRED_INPUTS)
        {
            logError("SelectiveScan: expected 5 to 8 inputs and 1 output");
            return -1;
        }
        if (inputTypes[0] != nvinfer1::DataType::kFLOAT && inputTypes[0] != nvinfer1::DataType::kHALF)
        {
            logError("SelectiveScan: u must be fp32 or fp16; y takes u's type");
            return -1;
        }
        outputTypes[0] = inputTypes[0];
        return 0;
    }
    catch (std::exception const& e)
    {
        logException(e);
    }
    return -1;
}

int32_t SelectiveScanPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /* shapeInputs */, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /* exprBuilder */) noexcept
{
    try
    {
        if (nbShapeInputs != 0 || nbOutputs != kSCAN_NB_OUTPUTS)
        {
            logError("SelectiveScan: takes no shape inputs and has 1 output");
            return -1;
        }
        ScanTensorDims dims[kSCAN_NB_SLOTS];
        auto const getDims = [](nvinfer1::DimsExprs const& exprs) { return exprs; };
        if (failed(resolveAndCheck(inputs, nbInputs, getDims, mRoles, dims)))
        {
            return -1;
        }
        outputs[0] = inputs[mRoles.input(ScanSlot::kU)];
        return 0;
    }
    catch (std::exception const& e)
    {
        logException(e);
    }
    return -1;
}

bool SelectiveScanPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        int32_t const nbPositions = nbInputs + nbOutputs;
        if (pos < 0 || pos >= nbPositions || nbPositions > kSCAN_NB_SLOTS + kSCAN_NB_OUTPUTS)
        {
            return false;
        }
        // Only positions 0..pos hold decided values; the logic reads no further.
        int32_t types[kSCAN_NB_SLOTS + kSCAN_NB_OUTPUTS]{};
        int32_t formats[kSCAN_NB_SLOTS + kSCAN_NB_OUTPUTS]{};
        for (int32_t i = 0; i <= pos; ++i)
        {
            types[i] = static_cast<int32_t>(inOut[i].desc.type);
            formats[i] = static_cast<int32_t>(inOut[i].desc.format);
        }
        return scanSupportsFormat(pos, nbInputs, nbOutputs, types, formats);
    }
    catch (std::exception const& e)
    {
        logException(e);
    }
    return false;
}

int32_t SelectiveScanPlugin::getNbOutputs() const noexcept
{
    return kSCAN_NB_OUTPUTS;
}

size_t SelectiveScanPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* /* inputs */,
    int32_t /* nbInputs */, nvinfer1::DynamicPluginTensorDesc const* /* outputs */,
    int32_t /* nbOutputs */) const noexcept
{
    return kSCAN_WORKSPACE_BYTES;
}

int32_t SelectiveScanPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /* out */, int32_t nbOutputs) noexcept
{
    try
    {
        ScanTensorDims dims[kSCAN_NB_SLOTS];
        auto const getDims = [](nvinfer1::PluginTensorDesc const& desc) { return desc.dims; };
        if (nbOutputs != kSCAN_NB_OUTPUTS || failed(resolveAndCheck(in, nbInputs, getDims, mRoles, dims))
            || failed(scanLaunchParams(mRoles, dims, static_cast<int32_t>(in[0].type), mAttributes, mParams)))
        {
            mParams = SelectiveScanParams{};
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logException(e);
    }
    mParams = SelectiveScanParams{};
    return -1;
}

int32_t SelectiveScanPlugin::enqueue(nvinfer1::PluginTensorDesc const* /* inputDesc */,
    nvinfer1::PluginTensorDesc const* /* outputDesc */, void const* const* inputs, void* const* outputs,
    void* /* workspace */, cudaStream_t stream) noexcept
{
    try
    {
        if (mParams.batch <= 0)
        {
            logError("SelectiveScan: enqueue() without a successful onShapeChange()");
            return -1;
        }
        SelectiveScanParams params = mParams;
        bindScanBuffers(mRoles, inputs, outputs[0], params);
        int32_t const status = avsSelectiveScanCuda(&params, stream);
        if (status != 0)
        {
            logError((std::string("SelectiveScan: CUDA launch failed: ")
                + cudaGetErrorString(static_cast<cudaError_t>(status)))
                         .c_str());
        }
        return status;
    }
    catch (std::exception const& e)
    {
        logException(e);
    }
    return -1;
}

nvinfer1::IPluginV3* SelectiveScanPlugin::attachToContext(nvinfer1::IPluginResourceContext* /* context */) noexcept
{
    return clone();
}

nvinfer1::PluginFieldCollection const* SelectiveScanPlugin::getFieldsToSerialize() noexcept
{
    ScanField const field = scanSerializedField(mAttributes);
    mSerializedField = nvinfer1::PluginField(
        field.name, field.data, static_cast<nvinfer1::PluginFieldType>(field.type), field.length);
    mSerializedFields.nbFields = 1;
    mSerializedFields.fields = &mSerializedField;
    return &mSerializedFields;
}

SelectiveScanPluginCreator::SelectiveScanPluginCreator()
{
    mFieldNames[0] = nvinfer1::PluginField(kSCAN_ATTR_DELTA_SOFTPLUS, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = 1;
    mFieldCollection.fields = mFieldNames;
}

char const* SelectiveScanPluginCreator::getPluginName() const noexcept
{
    return kSCAN_OP_NAME;
}

char const* SelectiveScanPluginCreator::getPluginVersion() const noexcept
{
    return kSCAN_PLUGIN_VERSION;
}

char const* SelectiveScanPluginCreator::getPluginNamespace() const noexcept
{
    return kSCAN_PLUGIN_NAMESPACE;
}

nvinfer1::PluginFieldCollection const* SelectiveScanPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

nvinfer1::IPluginV3* SelectiveScanPluginCreator::createPlugin(
    char const* /* name */, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /* phase */) noexcept
{
    try
    {
        std::vector<ScanField> fields;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            nvinfer1::PluginField const& f = fc->fields[i];
            fields.push_back(ScanField{f.name, f.data, static_cast<int32_t>(f.type), f.length});
        }
        ScanPluginAttributes attributes;
        if (failed(parseScanFields(fields.data(), static_cast<int32_t>(fields.size()), attributes)))
        {
            return nullptr;
        }
        return new SelectiveScanPlugin(attributes);
    }
    catch (std::exception const& e)
    {
        logException(e);
    }
    return nullptr;
}

} // namespace avs
