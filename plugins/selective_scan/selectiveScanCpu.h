// SelectiveScan on the CPU: the reference-exact kernel behind the ONNX Runtime custom op, run on the caller's threads.
// Op contract: README.md beside this file. No ONNX Runtime, TensorRT or torch types cross this header.
#ifndef AVS_SELECTIVE_SCAN_CPU_H
#define AVS_SELECTIVE_SCAN_CPU_H

#include "selectiveScanParams.h"

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace avs
{

//! Status codes of SelectiveScanCpuJob::status().
constexpr int32_t kSCAN_CPU_SUCCESS = 0;
constexpr int32_t kSCAN_CPU_INVALID_PARAMS = 1; //!< validateSelectiveScanParams() names the problem
constexpr int32_t kSCAN_CPU_OUT_OF_MEMORY = 2;  //!< a task's O(N * chunk) scratch buffer could not be allocated

//! y = SelectiveScan(u, delta, A, B, C, D, z, deltaBias), cut into tasks for the caller's thread pool: the kernel
//! starts no thread. Run runTask(&job, i) for i in [0, taskCount()), on any threads, concurrently or one after the
//! other (ONNX Runtime: KernelContext_ParallelFor over the session's intra-op pool), then read status(). Each task
//! takes blocks of (batch, group, 16 channels) from a shared counter until none is left, so a pool of T threads
//! keeps min(T, taskCount()) of them busy, and y is the same bit for bit whatever the threads and their order.
//! State and math are fp32 whatever params.dataType is.
class SelectiveScanCpuJob
{
public:
    //! Checks params with validateSelectiveScanParams(); the tensors they point to must outlive the tasks.
    explicit SelectiveScanCpuJob(SelectiveScanParams const& params) noexcept;

    SelectiveScanCpuJob(SelectiveScanCpuJob const&) = delete;
    SelectiveScanCpuJob& operator=(SelectiveScanCpuJob const&) = delete;

    //! Before the tasks: kSCAN_CPU_INVALID_PARAMS (and no task does anything) or kSCAN_CPU_SUCCESS; after them:
    //! kSCAN_CPU_SUCCESS or kSCAN_CPU_OUT_OF_MEMORY.
    int32_t status() const noexcept;

    //! How many tasks are worth running at once: one per 2^20 state updates (channel x step x state) and at most
    //! one per block, at least one (SelM's 1 x 512 x 5 at N = 16 is one task).
    size_t taskCount() const noexcept;

    //! A task, with the signature C thread pools call: job is a SelectiveScanCpuJob*, the index is not used.
    static void runTask(void* job, size_t index) noexcept;

private:
    void drainBlocks() noexcept;

    SelectiveScanParams mParams;
    int32_t mPerGroup{0};
    int64_t mBlocksPerGroup{0};
    int64_t mTotalBlocks{0};
    int64_t mTaskCount{0};
    std::atomic<int64_t> mNextBlock{0};
    std::atomic<int32_t> mStatus{kSCAN_CPU_SUCCESS};
};

} // namespace avs

#endif // AVS_SELECTIVE_SCAN_CPU_H
