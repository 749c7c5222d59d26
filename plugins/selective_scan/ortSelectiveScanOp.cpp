// ONNX Runtime custom op avs::SelectiveScan over the CPU kernel.
//
// Three ops share the name, and ONNX Runtime merges them into one schema: the fp32 and the fp16 kernel (data tensors
// u, delta, B, C, z, y in that type; A, D and delta_bias always fp32), tried first in that order, then a type guard
// that accepts any types and fails session creation with a message naming the offending input. Optional inputs D, z
// and delta_bias may be empty names anywhere in the input list. Every contract violation becomes an ORT status
// naming the input and what it should be; no exception leaves this library.
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

#include "selectiveScanCpu.h"

#include <cstdint>
#include <cstdio>
#include <limits>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace avs
{
namespace
{

constexpr uint32_t kORT_API = 17;
constexpr char const* kDOMAIN = "avs";
constexpr char const* kOP_NAME = "SelectiveScan";
constexpr char const* kATTR_DELTA_SOFTPLUS = "delta_softplus";
constexpr char const* kEXECUTION_PROVIDER = "CPUExecutionProvider";

//! Input positions, in the contract's order.
enum InputIndex : size_t
{
    kIN_U = 0,
    kIN_DELTA,
    kIN_A,
    kIN_B,
    kIN_C,
    kIN_D,
    kIN_Z,
    kIN_DELTA_BIAS,
    kNUM_INPUTS
};
constexpr char const* kINPUT_NAMES[kNUM_INPUTS] = {"u", "delta", "A", "B", "C", "D", "z", "delta_bias"};

//! A, D and delta_bias are fp32 whatever the data type.
constexpr bool isFloat32Input(size_t index)
{
    return index == kIN_A || index == kIN_D || index == kIN_DELTA_BIAS;
}

using Shape = std::vector<int64_t>;

std::string toString(Shape const& shape)
{
    std::ostringstream out;
    out << "[";
    for (size_t i = 0; i < shape.size(); ++i)
    {
        out << (i == 0 ? "" : ", ") << shape[i];
    }
    out << "]";
    return out.str();
}

Ort::Status invalid(std::string const& message)
{
    return Ort::Status(("SelectiveScan: " + message).c_str(), ORT_INVALID_ARGUMENT);
}

//! The sizes of a call, read from the input shapes.
struct ScanShape
{
    int64_t batch{0};
    int64_t dim{0};
    int64_t seqlen{0};
    int64_t dstate{0};
    int64_t ngroups{1};
};

//! Checks every input shape against the contract (README.md); fills `out` on success.
Ort::Status checkShapes(Shape const& u, Shape const& delta, Shape const& a, Shape const& b, Shape const& c,
    Shape const* d, Shape const* z, Shape const* deltaBias, ScanShape& out)
{
    if (u.size() != 3)
    {
        return invalid("input 'u' must be (batch, D, L), got shape " + toString(u));
    }
    out.batch = u[0];
    out.dim = u[1];
    out.seqlen = u[2];
    if (out.seqlen == 0)
    {
        return invalid("L = 0 (input 'u' has shape " + toString(u) + "); the scan needs at least one step");
    }
    if (out.batch == 0 || out.dim == 0)
    {
        return invalid("input 'u' has an empty batch or channel dimension: " + toString(u));
    }
    std::string const uShape = toString(u);
    if (delta != u)
    {
        return invalid("input 'delta' must have u's shape " + uShape + ", got " + toString(delta));
    }
    if (a.size() != 2 || a[0] != out.dim || a[1] < 1)
    {
        return invalid("input 'A' must be (D=" + std::to_string(out.dim) + ", N), got shape " + toString(a));
    }
    out.dstate = a[1];
    std::string const expectedB = "(batch=" + std::to_string(out.batch) + ", N=" + std::to_string(out.dstate)
        + ", L=" + std::to_string(out.seqlen) + ") or (batch, G, N, L) with G dividing D=" + std::to_string(out.dim);
    bool const ungrouped = b == Shape{out.batch, out.dstate, out.seqlen};
    bool const grouped = b.size() == 4 && b[0] == out.batch && b[2] == out.dstate && b[3] == out.seqlen;
    if (!ungrouped && !grouped)
    {
        return invalid("input 'B' must be " + expectedB + ", got shape " + toString(b));
    }
    out.ngroups = grouped ? b[1] : 1;
    if (out.ngroups < 1 || out.dim % out.ngroups != 0)
    {
        return invalid("input 'B' has G=" + std::to_string(out.ngroups) + " groups, which does not divide D="
            + std::to_string(out.dim) + "; expected " + expectedB);
    }
    if (c != b)
    {
        return invalid("input 'C' must have B's shape " + toString(b) + ", got " + toString(c));
    }
    Shape const perChannel{out.dim};
    if (d != nullptr && *d != perChannel)
    {
        return invalid("input 'D' must be (D=" + std::to_string(out.dim) + ",), got shape " + toString(*d));
    }
    if (z != nullptr && *z != u)
    {
        return invalid("input 'z' must have u's shape " + uShape + ", got " + toString(*z));
    }
    if (deltaBias != nullptr && *deltaBias != perChannel)
    {
        return invalid(
            "input 'delta_bias' must be (D=" + std::to_string(out.dim) + ",), got shape " + toString(*deltaBias));
    }
    int64_t const kMax = std::numeric_limits<int32_t>::max();
    if (out.batch > kMax || out.dim > kMax || out.seqlen > kMax || out.dstate > kMax)
    {
        return invalid("input 'u' " + uShape + " or 'A' " + toString(a) + " has a dimension above 2^31 - 1");
    }
    return Ort::Status{nullptr};
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

    Ort::Status compute(Ort::KernelContext context) const
    {
        size_t const count = context.GetInputCount();
        Ort::ConstValue inputs[kNUM_INPUTS];
        Shape shapes[kNUM_INPUTS];
        for (size_t i = 0; i < kNUM_INPUTS; ++i)
        {
            inputs[i] = i < count ? context.GetInput(i) : Ort::ConstValue{nullptr};
            if (inputs[i] != nullptr)
            {
                shapes[i] = inputs[i].GetTensorTypeAndShapeInfo().GetShape();
            }
            else if (i < kIN_D)
            {
                return invalid(std::string("input '") + kINPUT_NAMES[i] + "' is required");
            }
        }
        auto optionalShape = [&](size_t i) { return inputs[i] != nullptr ? &shapes[i] : nullptr; };
        ScanShape shape;
        Ort::Status status = checkShapes(shapes[kIN_U], shapes[kIN_DELTA], shapes[kIN_A], shapes[kIN_B],
            shapes[kIN_C], optionalShape(kIN_D), optionalShape(kIN_Z), optionalShape(kIN_DELTA_BIAS), shape);
        if (!status.IsOK())
        {
            return status;
        }

        auto data = [&](size_t i) -> void const* {
            return inputs[i] != nullptr ? inputs[i].GetTensorRawData() : nullptr;
        };
        SelectiveScanParams params;
        params.batch = static_cast<int32_t>(shape.batch);
        params.dim = static_cast<int32_t>(shape.dim);
        params.seqlen = static_cast<int32_t>(shape.seqlen);
        params.dstate = static_cast<int32_t>(shape.dstate);
        params.ngroups = static_cast<int32_t>(shape.ngroups);
        params.deltaSoftplus = mDeltaSoftplus;
        params.dataType = std::is_same<T, float>::value ? ScanDataType::kFLOAT32 : ScanDataType::kFLOAT16;
        params.u = data(kIN_U);
        params.delta = data(kIN_DELTA);
        params.A = static_cast<float const*>(data(kIN_A));
        params.B = data(kIN_B);
        params.C = data(kIN_C);
        params.D = static_cast<float const*>(data(kIN_D));
        params.z = data(kIN_Z);
        params.deltaBias = static_cast<float const*>(data(kIN_DELTA_BIAS));
        params.y = context.GetOutput(0, shapes[kIN_U]).GetTensorMutableData<T>();
        if (char const* problem = validateSelectiveScanParams(params))
        {
            return Ort::Status(problem, ORT_INVALID_ARGUMENT);
        }
        if (selectiveScanCpu(params, 0) != kSCAN_CPU_SUCCESS)
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
        return kOP_NAME;
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
        return index >= kIN_D ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
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
        int64_t value = 0;
        if (OrtStatus* status = api.KernelInfoGetAttribute_int64(info, kATTR_DELTA_SOFTPLUS, &value))
        {
            api.ReleaseStatus(status);
            value = 0;
            float asFloat = 0.0F;
            if (OrtStatus* other = api.KernelInfoGetAttribute_float(info, kATTR_DELTA_SOFTPLUS, &asFloat))
            {
                api.ReleaseStatus(other); // absent: the default
            }
            else
            {
                return api.CreateStatus(ORT_INVALID_ARGUMENT,
                    "SelectiveScan: attribute 'delta_softplus' must be an INT (0 or 1), got a FLOAT");
            }
        }
        if (value != 0 && value != 1)
        {
            std::string const message
                = "SelectiveScan: attribute 'delta_softplus' must be 0 or 1, got " + std::to_string(value);
            return api.CreateStatus(ORT_INVALID_ARGUMENT, message.c_str());
        }
        *kernel = new (std::nothrow) SelectiveScanKernel<T>(value == 1);
        return *kernel != nullptr ? nullptr : api.CreateStatus(ORT_FAIL, "SelectiveScan: out of memory");
    }

    ONNXTensorElementDataType GetInputType(size_t index) const noexcept
    {
        return isFloat32Input(index) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : kDATA_TYPE;
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
            for (size_t i = kIN_DELTA; i < kNUM_INPUTS && message.empty(); ++i)
            {
                ONNXTensorElementDataType const type = inputElementType(api, info, i);
                ONNXTensorElementDataType const expected
                    = isFloat32Input(i) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : dataType;
                if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED && type != expected)
                {
                    char const* rule = isFloat32Input(i) ? " (A, D and delta_bias are always float32)"
                                                         : " like u (u, delta, B, C and z share one type)";
                    message = std::string("input '") + kINPUT_NAMES[i] + "' is " + elementTypeName(type) + "; expected "
                        + elementTypeName(expected) + rule;
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
        Ort::CustomOpDomain domain{avs::kDOMAIN};
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
