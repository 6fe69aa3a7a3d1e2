// NF4 matrix-vector kernel for decode (1..kNf4Dp4aMaxTokens tokens) on the integer pipes:
// out[t, r] = sum_k x[t, k] W[r, k]. Written after the design study in bench/lab
// (nf4_gemv_dp4a_lab.cu, docs/perf.md): the older streaming kernel decoded through a shared-memory
// table, which held it near 1 TB/s; this one decodes in registers and keeps ~3.3 TB/s on large
// matrices on the H200.
//
// Layout: a thread owns one 32-column chunk (16 packed bytes) of a row; `threads_per_row` =
// cols / 32 threads (whole warps) cover a row, and a CTA covers `rows_per_pass` rows per pass.
// Row groups go to CTAs grid-stride; each thread keeps kStages 16-byte loads in flight in a
// register ring (ld.global.nc, no L1 allocation), with its block's scale code and nested absmax.
//
// Decoding: the code book as int8, q = round(127 * code), split into its non-positive half
// (codes 0..7, stored negated: 0..127) and its non-negative half (codes 8..15). One PRMT looks up
// four 4-bit codes in an 8-byte half table; a selector nibble with bit 3 set makes PRMT replicate
// the sign of the byte it picks, which is 0 in both half tables, so a code of the other half reads
// as 0: dot = dp4a(positive half) - dp4a(negated half). Per 8 weights: 1 XOR, 2 shifts, 4 PRMT,
// 4 DP4A. Activations: each thread quantizes its own chunk of x to int8 (scale max|x| / 127), as
// the CPU fast path (kernels.h) and llama.cpp's q8 activations do.
//
// Numerics: the int8 code values differ from 127 * code by <= 0.5 (RMS ~0.4% of a weight) and x
// by <= half its chunk's step; the output differs from the fp32 reference by ~5e-3 relative (RMS;
// tests/gpu/linear_test.cpp). Sums are exact in int32 within a chunk and fp32 across chunks.
//
// Programmatic dependent launch (sm_90): the kernel lets its successor launch at once and loads
// its first weights before it waits for its predecessor, so a weight stream starts while the op
// before it finishes. Nothing it reads before the wait is written by another kernel of a step.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/nf4_decode.cuh"
#include "backend/cuda/nf4_params.h"

namespace llamaq::cuda {
namespace {

constexpr int kChunkCols = 32;       // columns per thread and row: 16 packed bytes
constexpr int kStages = 8;           // 16-byte loads in flight per thread
constexpr int kMaxThreads = 512;     // a CTA: whole rows of whole warps
constexpr int kTargetThreads = 256;  // rows per pass fill a CTA up to this many threads
constexpr int kMaxSharedBytes = 40 * 1024;

// The int8 half tables of a code book, or false when it does not split into a non-positive half
// (codes 0..7) and a non-negative half (codes 8..15) within [-1, 1], as NF4's does.
struct HalfTables {
  uint32_t negated_low, negated_high;    // -round(127 * code[0..7]) as bytes 0..7
  uint32_t positive_low, positive_high;  // round(127 * code[8..15]) as bytes 0..7
};

bool half_tables_of(const float (&codes)[nf4::kCodes], HalfTables& tables) {
  uint8_t negated[8], positive[8];
  for (int i = 0; i < 8; ++i) {
    const float low = codes[i], high = codes[8 + i];
    if (!(low <= 0.0f && low >= -1.0f && high >= 0.0f && high <= 1.0f)) return false;
    negated[i] = uint8_t(std::lround(-127.0f * low));
    positive[i] = uint8_t(std::lround(127.0f * high));
  }
  std::memcpy(&tables.negated_low, negated, 8);
  std::memcpy(&tables.positive_low, positive, 8);
  return true;
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(selector));
  return r;
}

__device__ __forceinline__ uint4 stream16(const uint8_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t pack_bytes(int a, int b, int c, int d) {
  return (uint32_t(a) & 0xffu) | ((uint32_t(b) & 0xffu) << 8) | ((uint32_t(c) & 0xffu) << 16) |
         (uint32_t(d) << 24);
}

__device__ __forceinline__ void allow_dependents_to_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

__device__ __forceinline__ void wait_for_predecessors() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// x's 32 values from `col` on as int8, in the order the PRMT lookups yield the codes of a word:
// bytes (1, 0, 3, 2) of each half word (a byte keeps its even column in the high nibble).
// Returns the dequantization step max|x| / 127.
__device__ __forceinline__ float quantize_chunk(const float* __restrict__ x,  // [cols] f32
                                                int col, uint32_t (&packed)[8]) {
  float v[kChunkCols];
  const float4* src = reinterpret_cast<const float4*>(x + col);
#pragma unroll
  for (int i = 0; i < kChunkCols / 4; ++i) {
    const float4 f = __ldg(src + i);
    v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
  }
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kChunkCols; ++i)
    amax = fmaxf(amax, fabsf(v[i]));
  const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
  int q[kChunkCols];
#pragma unroll
  for (int i = 0; i < kChunkCols; ++i)
    q[i] = __float2int_rn(v[i] * inverse);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    packed[2 * j] = pack_bytes(q[8 * j + 1], q[8 * j], q[8 * j + 3], q[8 * j + 2]);
    packed[2 * j + 1] = pack_bytes(q[8 * j + 5], q[8 * j + 4], q[8 * j + 7], q[8 * j + 6]);
  }
  return amax * (1.0f / 127.0f);
}

// sum over the chunk of q(code) * q(x), exact in int32.
__device__ __forceinline__ int chunk_dot(const uint4& w, const uint32_t (&xq)[8],
                                         const HalfTables& t) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
  int positive = 0, negated = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t word = words[j];
    const uint32_t flipped = word ^ 0x88888888u;  // selects the other half of the table
    negated = __dp4a(int(prmt(t.negated_low, t.negated_high, word)), int(xq[2 * j]), negated);
    negated =
        __dp4a(int(prmt(t.negated_low, t.negated_high, word >> 16)), int(xq[2 * j + 1]), negated);
    positive =
        __dp4a(int(prmt(t.positive_low, t.positive_high, flipped)), int(xq[2 * j]), positive);
    positive = __dp4a(int(prmt(t.positive_low, t.positive_high, flipped >> 16)), int(xq[2 * j + 1]),
                      positive);
  }
  return positive - negated;
}

template <int kTokens, bool kDoubleQuant>
__global__ void __launch_bounds__(kMaxThreads)
    nf4_gemv_dp4a_kernel(Nf4Params p, HalfTables tables, int rows_per_pass,
                         const float* __restrict__ x,  // [kTokens, cols] f32
                         float* __restrict__ out) {    // [kTokens, rows] f32
  extern __shared__ float dp4a_shared[];
  float* nested_map = dp4a_shared;     // [256] (double quantization)
  float* partial = dp4a_shared + 256;  // [iterations * rows_per_pass][kTokens][warps_per_row]
  const int cols = int(p.cols), rows = int(p.rows);
  const int threads_per_row = cols / kChunkCols;
  const int warps_per_row = threads_per_row / 32;
  const int row_in_pass = int(threadIdx.x) / threads_per_row;
  const int col = (int(threadIdx.x) % threads_per_row) * kChunkCols;
  allow_dependents_to_launch();

  const int groups = (rows + rows_per_pass - 1) / rows_per_pass;
  const int block = int(blockIdx.x), grid = int(gridDim.x);
  const int iterations = block < groups ? (groups - block + grid - 1) / grid : 0;
  uint4 ring[kStages];
  uint32_t ring_scale[kStages];  // u8 code (double quantization) or f32 absmax bits
  float ring_nested[kStages];
  auto issue = [&](int slot, int i) {
    const int row = min((block + i * grid) * rows_per_pass + row_in_pass, rows - 1);
    const int64_t k = int64_t(row) * cols + col;
    ring[slot] = stream16(p.packed + k / 2);
    const unsigned block_index = unsigned(k >> p.block_shift);
    if (kDoubleQuant) {
      ring_scale[slot] = __ldg(p.absmax_codes + block_index);
      ring_nested[slot] = __ldg(p.nested_absmax + (block_index >> p.nested_shift));
    } else {
      ring_scale[slot] = __float_as_uint(__ldg(p.absmax + block_index));
    }
  };
#pragma unroll
  for (int s = 0; s < kStages; ++s)
    if (s < iterations) issue(s, s);

  wait_for_predecessors();  // x is the previous op's output
  if (kDoubleQuant) {
    for (int i = int(threadIdx.x); i < 256; i += int(blockDim.x))
      nested_map[i] = p.nested_map[i];
  }
  uint32_t xq[kTokens][8];
  float step[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t)
    step[t] = quantize_chunk(x + int64_t(t) * cols, col, xq[t]);
  __syncthreads();

  const int warp_in_row = (int(threadIdx.x) % threads_per_row) / 32;
  const bool lane0 = threadIdx.x % 32 == 0;
  for (int base = 0; base < iterations; base += kStages) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      const int i = base + s;
      if (i >= iterations) break;
      const uint4 w = ring[s];
      const uint32_t scale_raw = ring_scale[s];
      const float nested = kDoubleQuant ? ring_nested[s] : 0.0f;
      if (i + kStages < iterations) issue(s, i + kStages);
      const float scale = kDoubleQuant
                              ? __fadd_rn(__fmul_rn(nested_map[scale_raw], nested), p.nested_offset)
                              : __uint_as_float(scale_raw);
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        const float sum = warp_sum(float(chunk_dot(w, xq[t], tables)) * (step[t] * scale));
        if (lane0) {
          partial[((i * rows_per_pass + row_in_pass) * kTokens + t) * warps_per_row + warp_in_row] =
              sum;
        }
      }
    }
  }
  __syncthreads();
  for (int e = int(threadIdx.x); e < iterations * rows_per_pass * kTokens; e += int(blockDim.x)) {
    const int t = e % kTokens, slot = e / kTokens;
    const int row = (block + (slot / rows_per_pass) * grid) * rows_per_pass + slot % rows_per_pass;
    if (row >= rows) continue;
    float sum = 0.0f;
    for (int w = 0; w < warps_per_row; ++w)
      sum += partial[e * warps_per_row + w];
    out[int64_t(t) * rows + row] = sum * (1.0f / 127.0f);
  }
}

struct Launch {
  int threads = 0, rows_per_pass = 0, grid = 0;
  size_t shared_bytes = 0;
};

// Resident blocks per multiprocessor of a kernel with `threads` threads (a multiple of 32), once
// per process and size (the same on every device of one kind; a mixed machine only gets another
// grid size, not a wrong result).
template <auto kKernel>
int blocks_per_multiprocessor(int threads, const char* op) {
  static std::atomic<int> cached[kMaxThreads / 32 + 1] = {};
  int value = cached[threads / 32].load(std::memory_order_relaxed);
  if (value > 0) return value;
  check_cuda(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&value, kKernel, threads, kMaxSharedBytes / 4),
      op, "cudaOccupancyMaxActiveBlocksPerMultiprocessor(nf4_gemv_dp4a_kernel)");
  value = value > 0 ? value : 1;
  cached[threads / 32].store(value, std::memory_order_relaxed);
  return value;
}

// CTA shape for cols (threads per row, rows per pass); false when cols does not fit.
bool plan_shape(const Nf4Params& p, Launch& launch) {
  if (p.cols <= 0 || p.cols % (kChunkCols * 32) != 0 || p.rows <= 0) return false;
  const int64_t threads_per_row = p.cols / kChunkCols;
  if (threads_per_row > kMaxThreads) return false;
  launch.rows_per_pass = int(std::max<int64_t>(1, kTargetThreads / threads_per_row));
  launch.threads = int(threads_per_row) * launch.rows_per_pass;
  return true;
}

bool plan_grid(const Nf4Params& p, int n, int blocks_per_sm, int multiprocessors, Launch& launch) {
  const int64_t threads_per_row = p.cols / kChunkCols;
  const int64_t groups = (p.rows + launch.rows_per_pass - 1) / launch.rows_per_pass;
  launch.grid = int(std::min<int64_t>(groups, int64_t(blocks_per_sm) * multiprocessors));
  const int64_t iterations = (groups + launch.grid - 1) / launch.grid;
  launch.shared_bytes =
      sizeof(float) * size_t(256 + iterations * launch.rows_per_pass * n * (threads_per_row / 32));
  return launch.shared_bytes <= size_t(kMaxSharedBytes);
}

bool device_has_pdl(const char* op) {
  static std::atomic<int> cached{-1};  // -1 unknown, 0 no, 1 yes (compute capability >= 9)
  int value = cached.load(std::memory_order_relaxed);
  if (value >= 0) return value == 1;
  int device = 0, major = 0;
  check_cuda(cudaGetDevice(&device), op, "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), op,
             "cudaDeviceGetAttribute(compute capability)");
  value = major >= 9 ? 1 : 0;
  cached.store(value, std::memory_order_relaxed);
  return value == 1;
}

template <int kTokens, bool kDoubleQuant>
bool run(const Nf4Params& p, const HalfTables& tables, const float* x, float* out,
         int multiprocessors, cudaStream_t stream, bool launch_it) {
  constexpr auto kernel = nf4_gemv_dp4a_kernel<kTokens, kDoubleQuant>;
  Launch launch;
  if (!plan_shape(p, launch) ||
      !plan_grid(p, kTokens, blocks_per_multiprocessor<kernel>(launch.threads, "linear"),
                 multiprocessors, launch)) {
    return false;
  }
  if (!launch_it) return true;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(launch.grid));
  config.blockDim = dim3(unsigned(launch.threads));
  config.dynamicSmemBytes = launch.shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = device_has_pdl("linear") ? 1 : 0;
  check_cuda(cudaLaunchKernelEx(&config, kernel, p, tables, launch.rows_per_pass, x, out), "linear",
             "cudaLaunchKernelEx(nf4_gemv_dp4a_kernel)");
  return true;
}

template <int kTokens>
bool run_for_scales(const Nf4Params& p, const HalfTables& tables, const float* x, float* out,
                    int multiprocessors, cudaStream_t stream, bool launch_it) {
  return p.double_quant
             ? run<kTokens, true>(p, tables, x, out, multiprocessors, stream, launch_it)
             : run<kTokens, false>(p, tables, x, out, multiprocessors, stream, launch_it);
}

bool dispatch(const Nf4Params& p, const float* x, float* out, int n, int multiprocessors,
              cudaStream_t stream, bool launch_it) {
  HalfTables tables{};
  if (!half_tables_of(p.code_table, tables)) return false;
  if (p.block_size < kChunkCols || (p.double_quant && p.nested_shift < 0)) return false;
  if (p.rows * p.cols >= (int64_t(1) << 40) || p.rows >= (int64_t(1) << 31)) return false;
  if (reinterpret_cast<uintptr_t>(p.packed) % 16 != 0) return false;
  if (x != nullptr && reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;
  switch (n) {
    case 1:
      return run_for_scales<1>(p, tables, x, out, multiprocessors, stream, launch_it);
    case 2:
      return run_for_scales<2>(p, tables, x, out, multiprocessors, stream, launch_it);
    case 3:
      return run_for_scales<3>(p, tables, x, out, multiprocessors, stream, launch_it);
    case 4:
      return run_for_scales<4>(p, tables, x, out, multiprocessors, stream, launch_it);
    default:
      return false;
  }
}

}  // namespace

bool nf4_dp4a_gemv_supported(const Nf4Params& p, int n, int multiprocessors) {
  return dispatch(p, nullptr, nullptr, n, multiprocessors, nullptr, false);
}

void launch_nf4_dp4a_gemv(const Nf4Params& p, const float* x, float* out, int n,
                          int multiprocessors, cudaStream_t stream) {
  if (!dispatch(p, x, out, n, multiprocessors, stream, true)) {
    fail_op("linear",
            "the dp4a NF4 GEMV needs cols a multiple of 1024 (at most 16384), 1 to 4 tokens, a "
            "code book with non-positive codes 0..7 and non-negative codes 8..15, and 16-byte "
            "aligned data");
  }
}

}  // namespace llamaq::cuda
