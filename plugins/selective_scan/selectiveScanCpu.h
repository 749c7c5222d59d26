// SelectiveScan on the CPU: the reference-exact, multi-threaded kernel behind the ONNX Runtime custom op.
// Op contract: README.md beside this file. No ONNX Runtime, TensorRT or torch types cross this header.
#ifndef AVS_SELECTIVE_SCAN_CPU_H
#define AVS_SELECTIVE_SCAN_CPU_H

#include "selectiveScanParams.h"

#include <cstdint>

namespace avs
{

//! Status codes of selectiveScanCpu().
constexpr int32_t kSCAN_CPU_SUCCESS = 0;
constexpr int32_t kSCAN_CPU_INVALID_PARAMS = 1; //!< validateSelectiveScanParams() names the problem
constexpr int32_t kSCAN_CPU_OUT_OF_MEMORY = 2;  //!< a worker's O(N * chunk) scratch buffer could not be allocated

//! Runs y = SelectiveScan(u, delta, A, B, C, D, z, deltaBias) on the calling thread plus up to numThreads - 1
//! std::threads (numThreads <= 0: one per hardware thread; small problems always run on one thread).
//! State and math are fp32 whatever params.dataType is. Returns one of the kSCAN_CPU_* codes; never throws.
int32_t selectiveScanCpu(SelectiveScanParams const& params, int32_t numThreads) noexcept;

} // namespace avs

#endif // AVS_SELECTIVE_SCAN_CPU_H
