// SelectiveScan CPU kernel.
//
// Channels are the SIMD lanes. A block of kLANES channels of one group shares that group's (N, L) slices of B and C,
// so the recurrence x[n][w] = exp(dt[w] * A[w][n]) * x[n][w] + dt[w] * u[w] * B[n] and the readout
// y[w] += x[n][w] * C[n] are plain loops over w with no cross-lane reduction; GCC and Clang vectorise them on
// x86-64 (SSE2, plus AVX2 / AVX-512 clones) and aarch64 (NEON). Time is walked in chunks of kCHUNK steps whose inputs
// are transposed into lane-major scratch buffers, so a worker holds O(N * kCHUNK + kLANES * kCHUNK) floats.
#include "selectiveScanCpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
// One body, three instruction sets (AVX-512, AVX2+FMA, SSE2), picked at load time (ifunc). Limited to GCC >= 12,
// the compiler this was built and tested with; older GCC, other compilers and other targets build the portable body.
#define AVS_SCAN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#ifndef AVS_SCAN_CLONES
#define AVS_SCAN_CLONES
#endif

namespace avs
{
namespace
{

constexpr int32_t kLANES = 16;
constexpr int32_t kCHUNK = 64;
//! Below this many state updates per task (channel x step x state), another thread costs more than it saves.
constexpr int64_t kMIN_WORK_PER_TASK = int64_t{1} << 20;

// ---- fp16 <-> fp32 on bits (uint16_t holds IEEE binary16; no _Float16 or __fp16 needed) ----

inline float asFloat(uint32_t bits)
{
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

inline uint32_t asBits(float f)
{
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    return bits;
}

inline float toFloat(float v)
{
    return v;
}

inline float toFloat(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000U) << 16;
    uint32_t const em = h & 0x7FFFU;
    float const normal = asFloat((em << 13) + (112U << 23)); // exponent bias 15 -> 127
    float const special = asFloat((em << 13) | 0x7F800000U); // inf and nan keep their payload
    float const subnormal = static_cast<float>(em) * 0x1p-24F; // exact: em < 1024
    float const magnitude = em >= 0x7C00U ? special : (em < 0x0400U ? subnormal : normal);
    return asFloat(asBits(magnitude) | sign);
}

template <typename T>
T fromFloat(float v);

template <>
inline float fromFloat<float>(float v)
{
    return v;
}

//! Round to nearest even, overflow to inf, nan stays nan.
template <>
inline uint16_t fromFloat<uint16_t>(float v)
{
    uint32_t const bits = asBits(v);
    uint32_t const sign = (bits >> 16) & 0x8000U;
    uint32_t const mag = bits & 0x7FFFFFFFU;
    // Normal fp16: rebias 127 -> 15, round the 13 dropped mantissa bits (a carry may reach the exponent: correct).
    uint32_t const normal = (mag - (112U << 23) + 0x0FFFU + ((mag >> 13) & 1U)) >> 13;
    // Below 2^-14: adding 0.5 puts fp16's subnormal unit 2^-24 on the float's last mantissa bit; the FPU rounds.
    uint32_t const subnormal = asBits(asFloat(mag) + 0.5F) - asBits(0.5F);
    uint32_t const overflow = mag > 0x7F800000U ? 0x7E00U : 0x7C00U;
    uint32_t const h = mag >= 0x47800000U ? overflow : (mag < 0x38800000U ? subnormal : normal);
    return static_cast<uint16_t>(h | sign);
}

// ---- vectorisable exp, log1p, softplus, silu ----

constexpr float kLOG2E = 1.44269504088896341F;
constexpr float kLN2 = 0.693147180559945309F;
constexpr float kLN2_HI = 0.693359375F;         // 355 / 512: k * kLN2_HI is exact for |k| < 2^15
constexpr float kLN2_LO = -2.12194440054690583e-4F; // ln 2 - kLN2_HI
constexpr float kROUND = 12582912.0F;           // 1.5 * 2^23: x + kROUND - kROUND rounds x to an integer
constexpr float kSQRT2 = 1.41421356237309505F;
// exp(r) on [-ln2/2, ln2/2], degree 6, constant and linear terms fixed at 1, fitted by us for minimax relative
// error (fit error 2.0e-9, below fp32 rounding).
constexpr float kEXP_C2 = 4.999999404e-01F;
constexpr float kEXP_C3 = 1.666643173e-01F;
constexpr float kEXP_C4 = 4.166800156e-02F;
constexpr float kEXP_C5 = 8.374155499e-03F;
constexpr float kEXP_C6 = 1.384365954e-03F;

//! exp(x) in fp32 without libm, branch-free so that loops calling it vectorise. Max relative error 1.5e-7 for
//! x in [-87.3, 88.7] (normal results): 8.6e-8 measured with FMA, 1.1e-7 emulated without; tested in
//! tests/test_scan_native.py. Smaller x gives correctly scaled subnormals then 0, larger x inf, nan gives nan.
inline float fastExp(float x)
{
    x = std::min(std::max(x, -104.0F), 89.0F);
    float const shifted = x * kLOG2E + kROUND; // its low mantissa bits hold k = round(x * log2 e)
    float const kf = shifted - kROUND;
    float const r = (x - kf * kLN2_HI) - kf * kLN2_LO;
    float const p = 1.0F + r * (1.0F + r * (kEXP_C2 + r * (kEXP_C3 + r * (kEXP_C4 + r * (kEXP_C5 + r * kEXP_C6)))));
    // 2^k as 2^k1 * 2^k2 with k1 = k / 2: both stay normal for k in [-150, 128].
    int32_t const k = static_cast<int32_t>(asBits(shifted) - asBits(kROUND));
    int32_t const k1 = k / 2;
    int32_t const k2 = k - k1;
    float const s1 = asFloat(static_cast<uint32_t>(k1 + 127) << 23);
    float const s2 = asFloat(static_cast<uint32_t>(k2 + 127) << 23);
    return p * s1 * s2;
}

//! log(1 + t) for t in [0, 1]: s = 1 + t = 2^e * m with m in [sqrt(1/2), sqrt(2)], log m = 2 atanh((m-1)/(m+1))
//! by its odd series to w^9 (truncation < 3e-9 relative), plus (t - (s - 1)) / s for the rounding of s.
inline float log1pUnit(float t)
{
    float const s = 1.0F + t;
    bool const high = s > kSQRT2;
    float const m = high ? s * 0.5F : s;
    float const f = m - 1.0F;
    float const w = f / (2.0F + f);
    float const w2 = w * w;
    float const series = w * (2.0F + w2 * (2.0F / 3.0F + w2 * (2.0F / 5.0F + w2 * (2.0F / 7.0F + w2 * (2.0F / 9.0F)))));
    float const correction = (t - (s - 1.0F)) / s;
    return (high ? kLN2 : 0.0F) + series + correction;
}

//! mamba's softplus: log1p(exp(x)) for x <= 20, else x; computed as max(x, 0) + log1p(exp(-|x|)), which cannot
//! overflow.
inline float softplus(float x)
{
    return x > 20.0F ? x : std::max(x, 0.0F) + log1pUnit(fastExp(-std::fabs(x)));
}

inline float silu(float x)
{
    return x / (1.0F + fastExp(-x));
}

// ---- per-chunk passes over lane-major buffers [step][lane]; the hot ones are cloned per instruction set ----

//! dt += deltaBias, optional softplus, then du = dt * u.
AVS_SCAN_CLONES
void prepareDelta(float* __restrict dt, float* __restrict du, float const* __restrict u, float const* __restrict bias,
    bool deltaSoftplus, int32_t steps)
{
    int32_t const count = steps * kLANES;
    for (int32_t i = 0; i < count; ++i)
    {
        dt[i] += bias[i % kLANES];
    }
    if (deltaSoftplus)
    {
        for (int32_t i = 0; i < count; ++i)
        {
            dt[i] = softplus(dt[i]);
        }
    }
    for (int32_t i = 0; i < count; ++i)
    {
        du[i] = dt[i] * u[i];
    }
}

//! The recurrence over one chunk: x is the carried state [n][lane], bT and cT are [step][n].
AVS_SCAN_CLONES
void scanChunk(float const* __restrict dt, float const* __restrict du, float const* __restrict aT,
    float const* __restrict bT, float const* __restrict cT, float* __restrict x, float* __restrict y, int32_t steps,
    int32_t dstate)
{
    for (int32_t k = 0; k < steps; ++k)
    {
        float const* dtk = dt + k * kLANES;
        float const* duk = du + k * kLANES;
        float const* bk = bT + static_cast<int64_t>(k) * dstate;
        float const* ck = cT + static_cast<int64_t>(k) * dstate;
        float acc[kLANES] = {};
        for (int32_t n = 0; n < dstate; ++n)
        {
            float const* an = aT + n * kLANES;
            float* xn = x + n * kLANES;
            float const b = bk[n];
            float const c = ck[n];
            for (int32_t w = 0; w < kLANES; ++w)
            {
                float const state = fastExp(dtk[w] * an[w]) * xn[w] + duk[w] * b;
                xn[w] = state;
                acc[w] += state * c;
            }
        }
        for (int32_t w = 0; w < kLANES; ++w)
        {
            y[k * kLANES + w] = acc[w];
        }
    }
}

//! y += D * u, then y *= silu(z) when z is given.
AVS_SCAN_CLONES
void finishChunk(float* __restrict y, float const* __restrict u, float const* __restrict dSkip,
    float const* __restrict z, int32_t steps)
{
    int32_t const count = steps * kLANES;
    for (int32_t i = 0; i < count; ++i)
    {
        y[i] += dSkip[i % kLANES] * u[i];
    }
    if (z != nullptr)
    {
        for (int32_t i = 0; i < count; ++i)
        {
            y[i] *= silu(z[i]);
        }
    }
}

// ---- layout changes: rows of the (batch, dim, L) tensors <-> lane-major chunks ----

//! dst[k][w] = src[w * rowStride + k] for w < width, 0 for the padding lanes.
template <typename T>
void loadLanes(T const* src, int64_t rowStride, int32_t width, int32_t steps, float* dst)
{
    for (int32_t w = 0; w < width; ++w)
    {
        T const* row = src + w * rowStride;
        for (int32_t k = 0; k < steps; ++k)
        {
            dst[k * kLANES + w] = toFloat(row[k]);
        }
    }
    for (int32_t w = width; w < kLANES; ++w)
    {
        for (int32_t k = 0; k < steps; ++k)
        {
            dst[k * kLANES + w] = 0.0F;
        }
    }
}

//! dst[w * rowStride + k] = src[k][w] for w < width.
template <typename T>
void storeLanes(float const* src, int64_t rowStride, int32_t width, int32_t steps, T* dst)
{
    for (int32_t w = 0; w < width; ++w)
    {
        T* row = dst + w * rowStride;
        for (int32_t k = 0; k < steps; ++k)
        {
            row[k] = fromFloat<T>(src[k * kLANES + w]);
        }
    }
}

//! dst[k][n] = src[n * rowStride + k]: one group's B or C chunk, step-major.
template <typename T>
void loadStates(T const* src, int64_t rowStride, int32_t dstate, int32_t steps, float* dst)
{
    for (int32_t n = 0; n < dstate; ++n)
    {
        T const* row = src + n * rowStride;
        for (int32_t k = 0; k < steps; ++k)
        {
            dst[static_cast<int64_t>(k) * dstate + n] = toFloat(row[k]);
        }
    }
}

//! One worker's scratch buffers.
struct Workspace
{
    explicit Workspace(int32_t dstate)
        : storage(static_cast<size_t>(dstate) * (2 * kLANES + 2 * kCHUNK) + 5 * kCHUNK * kLANES + 2 * kLANES)
    {
        float* next = storage.data();
        auto take = [&next](size_t count) {
            float* block = next;
            next += count;
            return block;
        };
        aT = take(static_cast<size_t>(dstate) * kLANES);
        x = take(static_cast<size_t>(dstate) * kLANES);
        bT = take(static_cast<size_t>(dstate) * kCHUNK);
        cT = take(static_cast<size_t>(dstate) * kCHUNK);
        dt = take(kCHUNK * kLANES);
        du = take(kCHUNK * kLANES);
        u = take(kCHUNK * kLANES);
        z = take(kCHUNK * kLANES);
        y = take(kCHUNK * kLANES);
        bias = take(kLANES);
        dSkip = take(kLANES);
    }

    std::vector<float> storage;
    float* aT;
    float* x;
    float* bT;
    float* cT;
    float* dt;
    float* du;
    float* u;
    float* z;
    float* y;
    float* bias;
    float* dSkip;
};

//! Scans channels [channel0, channel0 + width) of one batch entry; all of them belong to one group.
template <typename T>
void scanBlock(SelectiveScanParams const& p, int32_t batchIdx, int32_t channel0, int32_t width, Workspace& ws)
{
    int32_t const dstate = p.dstate;
    int64_t const length = p.seqlen;
    int32_t const group = channel0 / (p.dim / p.ngroups);

    for (int32_t w = 0; w < kLANES; ++w)
    {
        bool const live = w < width;
        int64_t const channel = channel0 + w;
        for (int32_t n = 0; n < dstate; ++n)
        {
            ws.aT[n * kLANES + w] = live ? p.A[channel * dstate + n] : 0.0F;
        }
        ws.bias[w] = live && p.deltaBias != nullptr ? p.deltaBias[channel] : 0.0F;
        ws.dSkip[w] = live && p.D != nullptr ? p.D[channel] : 0.0F;
    }
    std::fill(ws.x, ws.x + static_cast<size_t>(dstate) * kLANES, 0.0F);

    int64_t const rowOffset = (static_cast<int64_t>(batchIdx) * p.dim + channel0) * length;
    int64_t const stateOffset = (static_cast<int64_t>(batchIdx) * p.ngroups + group) * dstate * length;
    T const* u = static_cast<T const*>(p.u) + rowOffset;
    T const* delta = static_cast<T const*>(p.delta) + rowOffset;
    T const* z = p.z != nullptr ? static_cast<T const*>(p.z) + rowOffset : nullptr;
    T* y = static_cast<T*>(p.y) + rowOffset;
    T const* bMat = static_cast<T const*>(p.B) + stateOffset;
    T const* cMat = static_cast<T const*>(p.C) + stateOffset;

    for (int64_t l0 = 0; l0 < length; l0 += kCHUNK)
    {
        int32_t const steps = static_cast<int32_t>(std::min<int64_t>(kCHUNK, length - l0));
        loadLanes(delta + l0, length, width, steps, ws.dt);
        loadLanes(u + l0, length, width, steps, ws.u);
        loadStates(bMat + l0, length, dstate, steps, ws.bT);
        loadStates(cMat + l0, length, dstate, steps, ws.cT);
        prepareDelta(ws.dt, ws.du, ws.u, ws.bias, p.deltaSoftplus, steps);
        scanChunk(ws.dt, ws.du, ws.aT, ws.bT, ws.cT, ws.x, ws.y, steps, dstate);
        if (z != nullptr)
        {
            loadLanes(z + l0, length, width, steps, ws.z);
        }
        finishChunk(ws.y, ws.u, ws.dSkip, z != nullptr ? ws.z : nullptr, steps);
        storeLanes(ws.y, length, width, steps, y + l0);
    }
}

} // namespace

SelectiveScanCpuJob::SelectiveScanCpuJob(SelectiveScanParams const& params) noexcept
    : mParams(params)
{
    if (validateSelectiveScanParams(params) != nullptr
        || (params.dataType != ScanDataType::kFLOAT32 && params.dataType != ScanDataType::kFLOAT16))
    {
        mStatus.store(kSCAN_CPU_INVALID_PARAMS);
        return;
    }
    mPerGroup = params.dim / params.ngroups;
    mBlocksPerGroup = (mPerGroup + kLANES - 1) / kLANES;
    mTotalBlocks = static_cast<int64_t>(params.batch) * params.ngroups * mBlocksPerGroup;
    int64_t const work = static_cast<int64_t>(params.batch) * params.dim * params.seqlen * params.dstate;
    mTaskCount = std::max<int64_t>(1, std::min(mTotalBlocks, work / kMIN_WORK_PER_TASK));
}

int32_t SelectiveScanCpuJob::status() const noexcept
{
    return mStatus.load();
}

size_t SelectiveScanCpuJob::taskCount() const noexcept
{
    return static_cast<size_t>(mTaskCount);
}

void SelectiveScanCpuJob::runTask(void* job, size_t /*index*/) noexcept
{
    static_cast<SelectiveScanCpuJob*>(job)->drainBlocks();
}

void SelectiveScanCpuJob::drainBlocks() noexcept
{
    SelectiveScanParams const& params = mParams;
    if (mNextBlock.load() >= mTotalBlocks || mStatus.load() != kSCAN_CPU_SUCCESS)
    {
        return; // a task started after the others took every block: no scratch to allocate
    }
    try
    {
        Workspace ws(params.dstate);
        for (int64_t i = mNextBlock.fetch_add(1); i < mTotalBlocks && mStatus.load() == kSCAN_CPU_SUCCESS;
             i = mNextBlock.fetch_add(1))
        {
            int32_t const block = static_cast<int32_t>(i % mBlocksPerGroup);
            int64_t const rest = i / mBlocksPerGroup;
            int32_t const group = static_cast<int32_t>(rest % params.ngroups);
            int32_t const batchIdx = static_cast<int32_t>(rest / params.ngroups);
            int32_t const channel0 = group * mPerGroup + block * kLANES;
            int32_t const width = std::min(kLANES, mPerGroup - block * kLANES);
            if (params.dataType == ScanDataType::kFLOAT16)
            {
                scanBlock<uint16_t>(params, batchIdx, channel0, width, ws);
            }
            else
            {
                scanBlock<float>(params, batchIdx, channel0, width, ws);
            }
        }
    }
    catch (std::bad_alloc const&)
    {
        mStatus.store(kSCAN_CPU_OUT_OF_MEMORY);
    }
}

} // namespace avs
