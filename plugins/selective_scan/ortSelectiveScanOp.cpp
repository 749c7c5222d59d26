// ONNX Runtime custom op avs::SelectiveScan over the CPU kernel.
//
// Three ops share the name, and ONNX Runtime merges them into one schema: the fp32 and the fp16 kernel (data tensors
// u, delta, B, C, z, y in that type; A, D and delta_bias always fp32), tried first in that order, then a type guard
// that accepts any types and fails session creation with a message naming the offending input. Optional inputs D, z
// and delta_bias may be empty names anywhere in the input list: inputs are read by position, the contract's one role
// rule. Roles, shape rules and the kernel parameters come from selectiveScanContract.h; every violation becomes an
// ORT status naming the input and what it should be; no exception leaves this library. The CPU kernel's tasks run
// on the session's intra-op thread pool (KernelContext_ParallelFor), so intra_op_num_threads bounds the threads.
//
// NOTE: written on Ort::CustomOpBase, not the Lite API (onnxruntime_lite_custom_op.h). The Lite API derives the schema
// from the compute signature, but its std::optional inputs only cover trailing omissions: an optional input left
// empty in the middle (D = "" with z given) reaches Ort::Custom::Tensor's constructor as a null OrtValue, which
// dereferences it (segfault in onnxruntime 1.31). CustomOpBase states the same schema explicitly and lets the kernel
// read the inputs itself.
//
// Built with ORT_API_MANUAL_INIT: no link dependency on onnxruntime. Whatever the headers' version (1.21 from Debian),
// the library asks the runtime for C API version kORT_API (17) and declares its ops at that version, so it loads into
// onnxruntime >= 1.17; it calls nothing newer.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include "selectiveScanContract.h"
#include "selectiveScanCpu.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

namespace avs
{
namespace
{

constexpr uint32_t kORT_API = 17;
constexpr char const* kEXECUTION_PROVIDER = "CPUExecutionProvider";
constexpr size_t kNUM_INPUTS = kSCAN_NB_SLOTS;
constexpr size_t kIN_U = static_cast<size_t>(ScanSlot::kU);

Ort::Status invalid(std::string const& message)
{
    return Ort::Status(message.c_str(), ORT_INVALID_ARGUMENT);
}

//! onnxruntime before 1.24 crashes building the shape-inference context of a node with an omitted optional input
//! (measured: 1.17.3 to 1.23.2 crash, 1.24.1 to 1.31.1 work). Older runtimes get no InferOutputShapeFn: they take
//! y's type from the kernel matched and its shape at run time.
bool infersShapesSafely(char const* version)
{
    int major = 0;
    int minor = 0;
    return std::sscanf(version, "%d.%d", &major, &minor) == 2 && (major > 1 || (major == 1 && minor >= 24));
}

//! Output y: the type and shape of u, whichever optional inputs are absent.
OrtStatusPtr ORT_API_CALL inferOutputLikeU(OrtCustomOp const* /*op*/, OrtShapeInferContext* context) noexcept
{
    OrtApi const& api = Ort::GetApi();
    OrtTensorTypeAndShapeInfo* info = nullptr; // owned by the context
    if (OrtStatus* status = api.ShapeInferContext_GetInputTypeShape(context, kIN_U, &info))
    {
        return status;
    }
    return api.ShapeInferContext_SetOutputTypeShape(context, 0, info);
}

//! Runs one node; T is float or Ort::Float16_t (the data type of u, delta, B, C, z and y).
template <typename T>
struct SelectiveScanKernel
{
    explicit SelectiveScanKernel(bool deltaSoftplus) noexcept
        : mDeltaSoftplus(deltaSoftplus)
    {
    }

    OrtStatusPtr ComputeV2(OrtKernelContext* context) noexcept
    {
        try
        {
            return compute(Ort::KernelContext(context)).release();
        }
        catch (Ort::Exception const& e)
        {
            return Ort::Status(e.what(), e.GetOrtErrorCode()).release();
        }
        catch (std::exception const& e)
        {
            return Ort::Status(e.what(), ORT_FAIL).release();
        }
    }

    //! Reads the inputs by position (an empty name is a null value), then lets the contract check and fill.
    Ort::Status compute(Ort::KernelContext context) const
    {
        size_t const count = std::min(context.GetInputCount(), kNUM_INPUTS);
        Ort::ConstValue inputs[kNUM_INPUTS];
        bool present[kNUM_INPUTS]{};
        void const* buffers[kNUM_INPUTS]{};
        ScanTensorDims dims[kNUM_INPUTS];
        for (size_t i = 0; i < count; ++i)
        {
            inputs[i] = context.GetInput(i);
            present[i] = inputs[i] != nullptr;
            if (!present[i])
            {
                continue;
            }
            std::vector<int64_t> const shape = inputs[i].GetTensorTypeAndShapeInfo().GetShape();
            if (shape.size() > static_cast<size_t>(kSCAN_MAX_RANK))
            {
                return invalid(std::string("SelectiveScan: input '") + kSCAN_INPUT_NAMES[i] + "' has rank "
                    + std::to_string(shape.size()) + "; no input has more than 4 dimensions");
            }
            dims[i].nbDims = static_cast<int32_t>(shape.size());
            std::copy(shape.begin(), shape.end(), dims[i].d.begin());
            buffers[i] = inputs[i].GetTensorRawData();
        }
        ScanInputRoles roles;
        ScanSizes sizes;
        SelectiveScanParams params;
        ScanDataType const dataType = std::is_same<T, float>::value ? ScanDataType::kFLOAT32 : ScanDataType::kFLOAT16;
        for (std::string const& message : {resolveScanInputs(static_cast<int32_t>(count), present, roles),
                 checkScanInputShapes(roles, dims, sizes), fillScanParams(sizes, dataType, mDeltaSoftplus, params)})
        {
            if (!message.empty())
            {
                return invalid(message);
            }
        }
        std::vector<int64_t> const yShape(dims[kIN_U].d.begin(), dims[kIN_U].d.begin() + dims[kIN_U].nbDims);
        bindScanBuffers(roles, buffers, context.GetOutput(0, yShape).GetTensorMutableData<T>(), params);
        if (char const* problem = validateSelectiveScanParams(params))
        {
            return invalid(problem);
        }
        return runOnIntraOpPool(context, params);
    }

    //! The kernel's tasks on the session's intra-op thread pool (intra_op_num_threads; none for 1): no thread is
    //! started here, and a scan never uses more threads than the session was given.
    static Ort::Status runOnIntraOpPool(Ort::KernelContext context, SelectiveScanParams const& params)
    {
        SelectiveScanCpuJob job(params);
        if (job.status() != kSCAN_CPU_SUCCESS)
        {
            return invalid("SelectiveScan: the CPU kernel refused its parameters");
        }
        Ort::Status status(Ort::GetApi().KernelContext_ParallelFor(
            context.GetOrtKernelContext(), &SelectiveScanCpuJob::runTask, job.taskCount(), 0, &job));
        if (!status.IsOK())
        {
            return status;
        }
        if (job.status() != kSCAN_CPU_SUCCESS)
        {
            return Ort::Status("SelectiveScan: out of memory for the CPU kernel's scratch buffers", ORT_FAIL);
        }
        return Ort::Status{nullptr};
    }

    bool mDeltaSoftplus;
};

//! What the three ops share: name, provider, declared API version, eight inputs (the last three optional), one output.
template <typename TOp, typename TKernel>
struct SelectiveScanOpBase : Ort::CustomOpBase<TOp, TKernel, /*WithStatus=*/true>
{
    SelectiveScanOpBase()
    {
        this->version = kORT_API;
    }

    char const* GetName() const noexcept
    {
        return kSCAN_OP_NAME;
    }

    char const* GetExecutionProviderType() const noexcept
    {
        return kEXECUTION_PROVIDER;
    }

    size_t GetInputTypeCount() const noexcept
    {
        return kNUM_INPUTS;
    }

    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const noexcept
    {
        return index >= static_cast<size_t>(kSCAN_NB_REQUIRED_INPUTS) ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    }

    size_t GetOutputTypeCount() const noexcept
    {
        return 1;
    }
};

//! The op for data type T (float or Ort::Float16_t).
template <typename T>
struct SelectiveScanOp : SelectiveScanOpBase<SelectiveScanOp<T>, SelectiveScanKernel<T>>
{
    static constexpr ONNXTensorElementDataType kDATA_TYPE = std::is_same<T, float>::value
        ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
        : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;

    //! Reads delta_softplus (INT, default 0; plugin_version and plugin_namespace are accepted and ignored).
    OrtStatusPtr CreateKernelV2(OrtApi const& api, OrtKernelInfo const* info, void** kernel) const noexcept
    {
        int64_t value = kSCAN_DELTA_SOFTPLUS_DEFAULT;
        if (OrtStatus* status = api.KernelInfoGetAttribute_int64(info, kSCAN_ATTR_DELTA_SOFTPLUS, &value))
        {
            api.ReleaseStatus(status);
            value = kSCAN_DELTA_SOFTPLUS_DEFAULT;
            float asFloat = 0.0F;
            if (OrtStatus* other = api.KernelInfoGetAttribute_float(info, kSCAN_ATTR_DELTA_SOFTPLUS, &asFloat))
            {
                api.ReleaseStatus(other); // absent: the default
            }
            else
            {
                return api.CreateStatus(ORT_INVALID_ARGUMENT,
                    "SelectiveScan: attribute 'delta_softplus' must be an INT (0 or 1), got a FLOAT");
            }
        }
        try
        {
            std::string const message = checkScanDeltaSoftplus(value);
            if (!message.empty())
            {
                return api.CreateStatus(ORT_INVALID_ARGUMENT, message.c_str());
            }
        }
        catch (std::exception const& e)
        {
            return api.CreateStatus(ORT_FAIL, e.what());
        }
        *kernel = new (std::nothrow) SelectiveScanKernel<T>(value == 1);
        return *kernel != nullptr ? nullptr : api.CreateStatus(ORT_FAIL, "SelectiveScan: out of memory");
    }

    ONNXTensorElementDataType GetInputType(size_t index) const noexcept
    {
        return scanSlotIsFloat32(static_cast<int32_t>(index)) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : kDATA_TYPE;
    }

    ONNXTensorElementDataType GetOutputType(size_t /*index*/) const noexcept
    {
        return kDATA_TYPE;
    }
};

char const* elementTypeName(ONNXTensorElementDataType type)
{
    switch (type)
    {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    default: return "a non-float type";
    }
}

//! The element type of a node input, or UNDEFINED when the input is absent or not a tensor.
ONNXTensorElementDataType inputElementType(OrtApi const& api, OrtKernelInfo const* info, size_t index)
{
    OrtTypeInfo* typeInfo = nullptr;
    if (OrtStatus* status = api.KernelInfo_GetInputTypeInfo(info, index, &typeInfo))
    {
        api.ReleaseStatus(status);
        return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    }
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    OrtTensorTypeAndShapeInfo const* tensorInfo = nullptr;
    OrtStatus* status = api.CastTypeInfoToTensorInfo(typeInfo, &tensorInfo);
    if (status == nullptr && tensorInfo != nullptr)
    {
        status = api.GetTensorElementType(tensorInfo, &type);
    }
    if (status != nullptr)
    {
        api.ReleaseStatus(status);
    }
    api.ReleaseTypeInfo(typeInfo);
    return type;
}

//! Never instantiated: SelectiveScanTypeGuard refuses every node it is asked to run.
struct RejectedKernel
{
    OrtStatusPtr ComputeV2(OrtKernelContext* /*context*/) noexcept
    {
        return Ort::GetApi().CreateStatus(ORT_FAIL, "SelectiveScan: the type guard has no kernel");
    }
};

//! Registered after the two typed ops with every type allowed: ONNX Runtime reaches it only for a type combination
//! no kernel serves, and it fails session creation naming the input (instead of "no kernel def matches").
struct SelectiveScanTypeGuard : SelectiveScanOpBase<SelectiveScanTypeGuard, RejectedKernel>
{
    OrtStatusPtr CreateKernelV2(OrtApi const& api, OrtKernelInfo const* info, void** kernel) const noexcept
    {
        *kernel = nullptr;
        try
        {
            ONNXTensorElementDataType const dataType = inputElementType(api, info, kIN_U);
            std::string message;
            if (dataType != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && dataType != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16)
            {
                message = std::string("input 'u' is ") + elementTypeName(dataType) + "; expected float32 or float16";
            }
            for (size_t i = kIN_U + 1; i < kNUM_INPUTS && message.empty(); ++i)
            {
                ONNXTensorElementDataType const type = inputElementType(api, info, i);
                bool const float32 = scanSlotIsFloat32(static_cast<int32_t>(i));
                ONNXTensorElementDataType const expected = float32 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : dataType;
                if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED && type != expected)
                {
                    char const* rule = float32 ? " (A, D and delta_bias are always float32)"
                                               : " like u (u, delta, B, C and z share one type)";
                    message = std::string("input '") + kSCAN_INPUT_NAMES[i] + "' is " + elementTypeName(type)
                        + "; expected " + elementTypeName(expected) + rule;
                }
            }
            if (message.empty())
            {
                message = "no typed kernel was selected for valid input types (did onnxruntime change kernel order?)";
            }
            return api.CreateStatus(ORT_INVALID_ARGUMENT, ("SelectiveScan: " + message).c_str());
        }
        catch (std::exception const& e)
        {
            return api.CreateStatus(ORT_FAIL, e.what());
        }
    }

    ONNXTensorElementDataType GetInputType(size_t /*index*/) const noexcept
    {
        return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    }

    ONNXTensorElementDataType GetOutputType(size_t /*index*/) const noexcept
    {
        return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    }
};

//! The ops (in kernel-selection order) and the domains handed to sessions. Never freed: sessions may outlive this
//! library's statics.
struct Registry
{
    explicit Registry(bool shapeInference)
    {
        if (shapeInference)
        {
            mFloatOp.InferOutputShapeFn = &inferOutputLikeU;
            mHalfOp.InferOutputShapeFn = &inferOutputLikeU;
            mTypeGuard.InferOutputShapeFn = &inferOutputLikeU;
        }
    }

    SelectiveScanOp<float> mFloatOp;
    SelectiveScanOp<Ort::Float16_t> mHalfOp;
    SelectiveScanTypeGuard mTypeGuard;
    std::mutex mMutex;
    std::vector<Ort::CustomOpDomain> mDomains;
};

} // namespace
} // namespace avs

//! The library's one exported symbol: ONNX Runtime calls it from SessionOptions.register_custom_ops_library().
extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(
    OrtSessionOptions* options, OrtApiBase const* apiBase)
{
    OrtApi const* api = apiBase->GetApi(avs::kORT_API);
    if (api == nullptr)
    {
        // Too old a runtime. Version 1 of the API table exists everywhere and has CreateStatus.
        OrtApi const* oldest = apiBase->GetApi(1);
        std::string const message = "libavs_ort_ops.so needs onnxruntime >= 1.17 (C API version "
            + std::to_string(avs::kORT_API) + "); this process runs onnxruntime " + apiBase->GetVersionString();
        return oldest != nullptr ? oldest->CreateStatus(ORT_FAIL, message.c_str()) : nullptr;
    }
    try
    {
        Ort::InitApi(api);
        static avs::Registry* const sRegistry = new avs::Registry(avs::infersShapesSafely(apiBase->GetVersionString()));
        Ort::CustomOpDomain domain{avs::kSCAN_DOMAIN};
        domain.Add(&sRegistry->mFloatOp);
        domain.Add(&sRegistry->mHalfOp);
        domain.Add(&sRegistry->mTypeGuard);
        Ort::UnownedSessionOptions(options).Add(domain);
        std::lock_guard<std::mutex> lock(sRegistry->mMutex);
        sRegistry->mDomains.push_back(std::move(domain));
        return nullptr;
    }
    catch (Ort::Exception const& e)
    {
        return api->CreateStatus(e.GetOrtErrorCode(), e.what());
    }
    catch (std::exception const& e)
    {
        return api->CreateStatus(ORT_FAIL, e.what());
    }
}
