// SelectiveScan on an NVIDIA GPU: the launcher behind the TensorRT plugin and the CUDA self-test.
// Op contract: README.md beside this file. No TensorRT, ONNX Runtime or torch types cross this header, and it
// needs no CUDA header either, so TensorRT-free host code (the plugin logic) can read its limits.
#ifndef AVS_SELECTIVE_SCAN_KERNEL_H
#define AVS_SELECTIVE_SCAN_KERNEL_H

#include "selectiveScanParams.h"

#include <cstdint>

// The same declaration as CUDA's driver_types.h (and TensorRT's NvInferRuntimeBase.h): a repeated identical
// typedef is legal, so this header works with or without cuda_runtime_api.h.
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace avs
{

//! Largest N (dstate) the kernel carries across chunks: one fp32 running state per state index in shared memory.
constexpr int32_t kSCAN_CUDA_MAX_DSTATE = 256;

} // namespace avs

//! Enqueues y = SelectiveScan(params) on `stream` (asynchronous; all pointers are device pointers).
//! Validates first: returns cudaErrorInvalidValue (1) for a null `params`, for anything
//! validateSelectiveScanParams() rejects, for N > kSCAN_CUDA_MAX_DSTATE and for batch * D >= 2^31.
//! Otherwise returns the launch status (cudaGetLastError()), cudaSuccess (0) when the kernel was enqueued.
extern "C" int32_t avsSelectiveScanCuda(avs::SelectiveScanParams const* params, cudaStream_t stream);

#endif // AVS_SELECTIVE_SCAN_KERNEL_H
