// The one boundary every SelectiveScan backend crosses: plain sizes, flags and pointers, no framework types.
// The CPU kernel, the CUDA launcher, the ONNX Runtime custom op and the TensorRT plugin all fill this struct.
// Op contract: README.md beside this file.
#ifndef AVS_SELECTIVE_SCAN_PARAMS_H
#define AVS_SELECTIVE_SCAN_PARAMS_H

#include <cstdint>

namespace avs
{

//! Element type of the data tensors u, delta, B, C, z and y. A, D and delta_bias are always fp32.
enum class ScanDataType : int32_t
{
    kFLOAT32 = 0,
    kFLOAT16 = 1,
};

//! All tensors are dense and row-major (TensorRT's linear format, ONNX Runtime's layout):
//! u, delta, z, y (batch, dim, seqlen); A (dim, dstate); B, C (batch, ngroups, dstate, seqlen), where the
//! ungrouped 3-D form (batch, dstate, seqlen) is ngroups = 1; D, deltaBias (dim).
struct SelectiveScanParams
{
    int32_t batch{0};
    int32_t dim{0};
    int32_t seqlen{0};
    int32_t dstate{0};
    int32_t ngroups{1};
    bool deltaSoftplus{false};
    ScanDataType dataType{ScanDataType::kFLOAT32};

    void const* u{nullptr};
    void const* delta{nullptr};
    float const* A{nullptr};
    void const* B{nullptr};
    void const* C{nullptr};
    float const* D{nullptr};         //!< optional
    void const* z{nullptr};          //!< optional
    float const* deltaBias{nullptr}; //!< optional
    void* y{nullptr};
};

//! nullptr when the sizes and required pointers are consistent, else a static message naming the problem.
inline char const* validateSelectiveScanParams(SelectiveScanParams const& p)
{
    if (p.batch <= 0 || p.dim <= 0 || p.dstate <= 0)
    {
        return "SelectiveScan: batch, D and N must be positive";
    }
    if (p.seqlen <= 0)
    {
        return "SelectiveScan: L = 0 (empty sequence); the scan needs at least one step";
    }
    if (p.ngroups <= 0 || p.dim % p.ngroups != 0)
    {
        return "SelectiveScan: the group count G of B and C must divide D";
    }
    if (p.u == nullptr || p.delta == nullptr || p.A == nullptr || p.B == nullptr || p.C == nullptr || p.y == nullptr)
    {
        return "SelectiveScan: u, delta, A, B, C and y are required";
    }
    return nullptr;
}

} // namespace avs

#endif // AVS_SELECTIVE_SCAN_PARAMS_H
