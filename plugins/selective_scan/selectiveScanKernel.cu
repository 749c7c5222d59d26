// SelectiveScan CUDA kernel: a chunked parallel scan, one thread block per (batch, channel) row.
//
// The recurrence h_l = exp(delta_l * A_n) * h_{l-1} + delta_l * B_{n,l} * u_l is a chain of affine steps
// h -> a * h + b, and composing steps is associative: (a0, b0) then (a1, b1) is (a1 * a0, a1 * b0 + b1).
// Each block walks its row of length L in chunks of kThreads * kItems positions. Per chunk it loads u and delta
// once, then for each state index n loads B_n and C_n, runs one inclusive block scan over the chunk's (a, b)
// pairs seeded with the fp32 state carried out of the previous chunk, and accumulates y += h * C_n in registers.
// Positions past L are the identity step (1, 0). Math and state are fp32 whatever the I/O type.
// Our own code; the design follows the one described for mamba_ssm's forward kernel (state-spaces/mamba,
// csrc/selective_scan), which was read for understanding only.
#include "selectiveScanKernel.h"

#include <cub/block/block_load.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/block/block_store.cuh>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <climits>
#include <cstdint>

namespace avs
{
namespace
{

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}

__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v);

template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}

template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

//! Composition of two affine steps h -> a * h + b, `first` applied before `second` (x = a, y = b).
struct ComposeSteps
{
    __device__ __forceinline__ float2 operator()(float2 const& first, float2 const& second) const
    {
        return make_float2(second.x * first.x, second.x * first.y + second.y);
    }
};

//! Block-scan prefix callback: seeds a chunk with the state carried out of the previous chunks, as the step
//! (1, h), and advances that state by the chunk's aggregate step. cub calls it from the first warp and applies
//! lane 0's result, so lane 0 (thread 0) holds the state for the next chunk afterwards.
struct CarriedState
{
    float state;

    __device__ __forceinline__ float2 operator()(float2 const& chunkAggregate)
    {
        float2 const seed = make_float2(1.F, state);
        state = chunkAggregate.x * state + chunkAggregate.y;
        return seed;
    }
};

//! Loads `valid` elements of one chunk (blocked arrangement: thread t holds positions t * kItems ...) as fp32.
//! Ends with a barrier, so the caller may reuse the temporary storage at once.
template <typename Load, typename T, int32_t kItems>
__device__ __forceinline__ void loadChunk(
    typename Load::TempStorage& temp, T const* src, int32_t valid, float (&dst)[kItems])
{
    T raw[kItems];
    Load(temp).Load(src, raw, valid, fromFloat<T>(0.F));
    __syncthreads();
#pragma unroll
    for (int32_t i = 0; i < kItems; ++i)
    {
        dst[i] = toFloat(raw[i]);
    }
}

template <typename T, int32_t kThreads, int32_t kItems>
__global__ void __launch_bounds__(kThreads) selectiveScanKernel(SelectiveScanParams const p)
{
    using Load = cub::BlockLoad<T, kThreads, kItems, cub::BLOCK_LOAD_WARP_TRANSPOSE>;
    using Store = cub::BlockStore<T, kThreads, kItems, cub::BLOCK_STORE_WARP_TRANSPOSE>;
    using Scan = cub::BlockScan<float2, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;
    constexpr int32_t kChunk = kThreads * kItems;

    __shared__ union
    {
        typename Load::TempStorage load;
        typename Store::TempStorage store;
        typename Scan::TempStorage scan;
    } sTemp;
    __shared__ float sState[kSCAN_CUDA_MAX_DSTATE];

    int64_t const row = blockIdx.x; // batch index * D + channel
    int64_t const batchIndex = row / p.dim;
    int32_t const channel = static_cast<int32_t>(row % p.dim);
    int32_t const group = channel / (p.dim / p.ngroups);
    int64_t const length = p.seqlen;

    T const* u = static_cast<T const*>(p.u) + row * length;
    T const* delta = static_cast<T const*>(p.delta) + row * length;
    T const* z = p.z == nullptr ? nullptr : static_cast<T const*>(p.z) + row * length;
    T* y = static_cast<T*>(p.y) + row * length;
    int64_t const bcOffset = (batchIndex * p.ngroups + group) * p.dstate * length;
    T const* bRows = static_cast<T const*>(p.B) + bcOffset;
    T const* cRows = static_cast<T const*>(p.C) + bcOffset;
    float const* aRow = p.A + static_cast<int64_t>(channel) * p.dstate;
    float const skip = p.D == nullptr ? 0.F : p.D[channel];
    float const bias = p.deltaBias == nullptr ? 0.F : p.deltaBias[channel];

    // Ordered before the first read by the barrier inside the first loadChunk.
    for (int32_t n = threadIdx.x; n < p.dstate; n += kThreads)
    {
        sState[n] = 0.F;
    }

    for (int64_t start = 0; start < length; start += kChunk)
    {
        int64_t const remaining = length - start;
        int32_t const valid = remaining < kChunk ? static_cast<int32_t>(remaining) : kChunk;
        float uChunk[kItems];
        float dtChunk[kItems];
        float out[kItems];
        loadChunk<Load>(sTemp.load, u + start, valid, uChunk);
        loadChunk<Load>(sTemp.load, delta + start, valid, dtChunk);
#pragma unroll
        for (int32_t i = 0; i < kItems; ++i)
        {
            float const dt = dtChunk[i] + bias;
            dtChunk[i] = (p.deltaSoftplus && dt <= 20.F) ? log1pf(expf(dt)) : dt;
            out[i] = 0.F;
        }

        for (int32_t n = 0; n < p.dstate; ++n)
        {
            float bChunk[kItems];
            float cChunk[kItems];
            loadChunk<Load>(sTemp.load, bRows + n * length + start, valid, bChunk);
            loadChunk<Load>(sTemp.load, cRows + n * length + start, valid, cChunk);
            float const a = aRow[n];
            float2 steps[kItems];
#pragma unroll
            for (int32_t i = 0; i < kItems; ++i)
            {
                bool const inside = static_cast<int32_t>(threadIdx.x) * kItems + i < valid;
                steps[i] = inside ? make_float2(expf(dtChunk[i] * a), dtChunk[i] * uChunk[i] * bChunk[i])
                                  : make_float2(1.F, 0.F);
            }
            CarriedState carry{sState[n]};
            Scan(sTemp.scan).InclusiveScan(steps, steps, ComposeSteps{}, carry);
#pragma unroll
            for (int32_t i = 0; i < kItems; ++i)
            {
                out[i] += steps[i].y * cChunk[i];
            }
            if (threadIdx.x == 0)
            {
                sState[n] = carry.state;
            }
            __syncthreads(); // the scan storage is reused by the next load; sState[n] is read by the next chunk
        }

        float zChunk[kItems];
        if (z != nullptr) // uniform over the block, so the barrier inside loadChunk is safe
        {
            loadChunk<Load>(sTemp.load, z + start, valid, zChunk);
        }
        T result[kItems];
#pragma unroll
        for (int32_t i = 0; i < kItems; ++i)
        {
            float v = out[i] + uChunk[i] * skip;
            if (z != nullptr)
            {
                v *= zChunk[i] / (1.F + expf(-zChunk[i]));
            }
            result[i] = fromFloat<T>(v);
        }
        Store(sTemp.store).Store(y + start, result, valid);
        __syncthreads();
    }
}

template <typename T, int32_t kThreads, int32_t kItems>
cudaError_t launchWithConfig(SelectiveScanParams const& params, cudaStream_t stream)
{
    dim3 const grid(static_cast<uint32_t>(static_cast<int64_t>(params.batch) * params.dim));
    selectiveScanKernel<T, kThreads, kItems><<<grid, kThreads, 0, stream>>>(params);
    return cudaGetLastError();
}

} // namespace

//! Picks the chunk shape from L: short rows get small blocks, long rows 2048-position chunks.
template <typename T>
cudaError_t launchSelectiveScan(SelectiveScanParams const& params, cudaStream_t stream)
{
    if (params.seqlen <= 128)
    {
        return launchWithConfig<T, 32, 4>(params, stream);
    }
    if (params.seqlen <= 512)
    {
        return launchWithConfig<T, 64, 8>(params, stream);
    }
    return launchWithConfig<T, 128, 16>(params, stream);
}

template cudaError_t launchSelectiveScan<float>(SelectiveScanParams const& params, cudaStream_t stream);
template cudaError_t launchSelectiveScan<__half>(SelectiveScanParams const& params, cudaStream_t stream);

} // namespace avs

extern "C" int32_t avsSelectiveScanCuda(avs::SelectiveScanParams const* params, cudaStream_t stream)
{
    if (params == nullptr || avs::validateSelectiveScanParams(*params) != nullptr
        || params->dstate > avs::kSCAN_CUDA_MAX_DSTATE
        || static_cast<int64_t>(params->batch) * params->dim > static_cast<int64_t>(INT_MAX))
    {
        return static_cast<int32_t>(cudaErrorInvalidValue);
    }
    switch (params->dataType)
    {
    case avs::ScanDataType::kFLOAT32: return static_cast<int32_t>(avs::launchSelectiveScan<float>(*params, stream));
    case avs::ScanDataType::kFLOAT16: return static_cast<int32_t>(avs::launchSelectiveScan<__half>(*params, stream));
    }
    return static_cast<int32_t>(cudaErrorInvalidValue);
}
