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
// One launch can cover up to three matrices that share x (q, k and v): their row groups follow
// one another. Gate and up can also run as a pair whose passes hold gate row r next to up row r,
// so that the kernel writes silu(gate) * up and the MLP needs no separate SwiGLU kernel. With
// `accumulate` the kernel adds its result into out (the residual add after o_proj and down_proj).
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
#include <span>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/kernel_attributes.h"
#include "backend/cuda/nf4_decode.cuh"
#include "backend/cuda/nf4_params.h"

namespace llamaq::cuda {
namespace {

constexpr int kChunkCols = 32;       // columns per thread and row: 16 packed bytes
constexpr int kStages = 8;           // 16-byte loads in flight per thread
constexpr int kMaxThreads = 512;     // a CTA: whole rows of whole warps
constexpr int kTargetThreads = 256;  // rows per pass fill a CTA up to this many threads
constexpr int kMaxSharedBytes = 40 * 1024;
constexpr int kMaxGroup = 3;  // matrices of one launch (q, k, v)

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
  std::memcpy(&tables.negated_low, negated, 4);
  std::memcpy(&tables.negated_high, negated + 4, 4);
  std::memcpy(&tables.positive_low, positive, 4);
  std::memcpy(&tables.positive_high, positive + 4, 4);
  return true;
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(selector));
  return r;
}

__device__ __forceinline__ uint32_t pack_bytes(int a, int b, int c, int d) {
  return (uint32_t(a) & 0xffu) | ((uint32_t(b) & 0xffu) << 8) | ((uint32_t(c) & 0xffu) << 16) |
         (uint32_t(d) << 24);
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
    const float4 f = src[i];  // written by the previous kernel: not through the read-only path
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

// One matrix of a group (q/k/v, or gate/up), and the group: matrices that share x, cols, the
// block sizes, the scale format and the code book. Rows are cut into groups of rows_per_pass;
// row group g of the whole launch belongs to the matrix whose first_group is the largest <= g.
struct Dp4aMatrix {
  const uint8_t* packed;        // [rows * cols / 2] u8
  const uint8_t* absmax_codes;  // double quantization: [n_blocks] u8
  const float* absmax;          // plain: [n_blocks] f32
  const float* nested_absmax;   // double quantization: [n_blocks >> nested_shift] f32
  const float* nested_map;      // double quantization: [256] f32
  float nested_offset;
  int rows;
  int first_group;
  float* out;  // [n, rows] f32 (with SwiGLU: the gate matrix's holds silu(gate) * up)
};

struct Dp4aGroup {
  Dp4aMatrix m[kMaxGroup];
  int count;
  int cols;
  int block_shift;
  int nested_shift;
  int rows_per_pass;
  int total_groups;
  bool accumulate;  // out += result (the residual add) instead of out = result
};

// a, b or c by index (kernel parameters indexed at run time would be copied to local memory).
template <typename T>
__device__ __forceinline__ T pick(int i, T a, T b, T c) {
  return i == 0 ? a : i == 1 ? b : c;
}
#define LLAMAQ_PICK(g, i, field) pick(i, (g).m[0].field, (g).m[1].field, (g).m[2].field)

// kSwiglu: a group of two (gate, up) with an even rows_per_pass; a pass holds gate row r in its
// even slots and up row r in the odd one after, and the kernel writes silu(gate) * up.
template <int kTokens, bool kDoubleQuant, bool kSwiglu>
__global__ void __launch_bounds__(kMaxThreads)
    nf4_gemv_dp4a_kernel(Dp4aGroup g, HalfTables tables,
                         const float* __restrict__ x) {  // [kTokens, cols] f32
  extern __shared__ float dp4a_shared[];
  float* nested_maps = dp4a_shared;                // [count][256] (double quantization)
  float* partial = dp4a_shared + 256 * kMaxGroup;  // [iterations * rpp][kTokens][warps_per_row]
  const int cols = g.cols, rpp = g.rows_per_pass;
  const int threads_per_row = cols / kChunkCols;
  const int warps_per_row = threads_per_row / 32;
  const int row_in_pass = int(threadIdx.x) / threads_per_row;
  const int col = (int(threadIdx.x) % threads_per_row) * kChunkCols;
  allow_dependents_to_launch();

  const int block = int(blockIdx.x), grid = int(gridDim.x);
  const int iterations = block < g.total_groups ? (g.total_groups - block + grid - 1) / grid : 0;
  // The matrix and row that this thread's slot of row group `group` reads.
  auto locate = [&](int group, int& matrix, int& row) {
    if (kSwiglu) {
      matrix = row_in_pass & 1;
      row = group * (rpp / 2) + row_in_pass / 2;
    } else {
      matrix = int(g.count > 1 && group >= g.m[1].first_group) +
               int(g.count > 2 && group >= g.m[2].first_group);
      row = (group - LLAMAQ_PICK(g, matrix, first_group)) * rpp + row_in_pass;
    }
  };
  uint4 ring[kStages];
  uint32_t ring_scale[kStages];  // u8 code (double quantization) or f32 absmax bits
  float ring_nested[kStages];
  int ring_matrix[kStages];
  auto issue = [&](int slot, int i) {
    int matrix, row;
    locate(block + i * grid, matrix, row);
    row = min(row, LLAMAQ_PICK(g, matrix, rows) - 1);  // a clamped duplicate is not stored
    const int64_t k = int64_t(row) * cols + col;
    ring[slot] = load_streaming(LLAMAQ_PICK(g, matrix, packed) + k / 2);
    const unsigned block_index = unsigned(k >> g.block_shift);
    if (kDoubleQuant) {
      ring_scale[slot] = __ldg(LLAMAQ_PICK(g, matrix, absmax_codes) + block_index);
      ring_nested[slot] =
          __ldg(LLAMAQ_PICK(g, matrix, nested_absmax) + (block_index >> g.nested_shift));
    } else {
      ring_scale[slot] = __float_as_uint(__ldg(LLAMAQ_PICK(g, matrix, absmax) + block_index));
    }
    ring_matrix[slot] = matrix;
  };
#pragma unroll
  for (int s = 0; s < kStages; ++s)
    if (s < iterations) issue(s, s);

  wait_for_predecessors();  // x is the previous op's output
  if (kDoubleQuant) {
    for (int i = int(threadIdx.x); i < 256 * g.count; i += int(blockDim.x))
      nested_maps[i] = LLAMAQ_PICK(g, i / 256, nested_map)[i % 256];
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
      const int matrix = ring_matrix[s];
      if (i + kStages < iterations) issue(s, i + kStages);
      const float scale =
          kDoubleQuant ? __fadd_rn(__fmul_rn(nested_maps[matrix * 256 + int(scale_raw)], nested),
                                   LLAMAQ_PICK(g, matrix, nested_offset))
                       : __uint_as_float(scale_raw);
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        const float sum = warp_sum(float(chunk_dot(w, xq[t], tables)) * (step[t] * scale));
        if (lane0) {
          partial[((i * rpp + row_in_pass) * kTokens + t) * warps_per_row + warp_in_row] = sum;
        }
      }
    }
  }
  __syncthreads();
  // Slot e = (i * rpp + r) * kTokens + t; with SwiGLU, pairs of slots r = 2j, 2j + 1.
  const int step_r = kSwiglu ? 2 : 1;
  const int outputs = iterations * (rpp / step_r) * kTokens;
  auto row_sum = [&](int slot, int t) {
    float sum = 0.0f;
    for (int w = 0; w < warps_per_row; ++w)
      sum += partial[(slot * kTokens + t) * warps_per_row + w];
    return sum * (1.0f / 127.0f);
  };
  for (int e = int(threadIdx.x); e < outputs; e += int(blockDim.x)) {
    const int t = e % kTokens, pair = e / kTokens;
    const int i = pair / (rpp / step_r), r = (pair % (rpp / step_r)) * step_r;
    const int group = block + i * grid;
    int matrix, row;
    if (kSwiglu) {
      matrix = 0;
      row = group * (rpp / 2) + r / 2;
    } else {
      matrix = int(g.count > 1 && group >= g.m[1].first_group) +
               int(g.count > 2 && group >= g.m[2].first_group);
      row = (group - LLAMAQ_PICK(g, matrix, first_group)) * rpp + r;
    }
    const int rows = LLAMAQ_PICK(g, matrix, rows);
    if (row >= rows) continue;
    float value = row_sum(i * rpp + r, t);
    if (kSwiglu) {  // the CPU reference's silu(g) * u: g / (1 + exp(-g)) * u
      value =
          __fmul_rn(__fdiv_rn(value, __fadd_rn(1.0f, expf(-value))), row_sum(i * rpp + r + 1, t));
    }
    float* out = LLAMAQ_PICK(g, matrix, out) + int64_t(t) * rows + row;
    *out = g.accumulate ? __fadd_rn(*out, value) : value;  // as add_inplace: x + projection
  }
}
#undef LLAMAQ_PICK

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

// Whether one matrix can run here at all (shape, code book, scales, alignment).
bool matrix_supported(const Nf4Params& p, HalfTables& tables) {
  if (!half_tables_of(p.code_table, tables)) return false;
  if (p.block_size < kChunkCols || (p.double_quant && p.nested_shift < 0)) return false;
  if (p.cols <= 0 || p.cols % (kChunkCols * 32) != 0 || p.cols / kChunkCols > kMaxThreads) {
    return false;
  }
  if (p.rows <= 0 || p.rows * p.cols >= (int64_t(1) << 40) || p.rows >= (int64_t(1) << 28)) {
    return false;
  }
  return reinterpret_cast<uintptr_t>(p.packed) % 16 == 0;
}

// The group's parameters (outputs left null), or false when the matrices cannot share a launch.
bool make_group(std::span<const Nf4Params> ps, bool swiglu, Dp4aGroup& g, HalfTables& tables) {
  if (ps.empty() || ps.size() > size_t(kMaxGroup) || (swiglu && ps.size() != 2)) return false;
  g = Dp4aGroup{};
  g.count = int(ps.size());
  const Nf4Params& first = ps[0];
  if (!matrix_supported(first, tables)) return false;
  g.cols = int(first.cols);
  g.block_shift = first.block_shift;
  g.nested_shift = first.double_quant ? first.nested_shift : 0;
  const int threads_per_row = g.cols / kChunkCols;
  g.rows_per_pass = std::max(1, kTargetThreads / threads_per_row);
  if (swiglu && (g.rows_per_pass % 2 != 0 || ps[0].rows != ps[1].rows)) return false;
  int groups = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    const Nf4Params& p = ps[i];
    HalfTables own{};
    if (!matrix_supported(p, own) || p.cols != first.cols || p.block_shift != first.block_shift ||
        p.double_quant != first.double_quant ||
        (p.double_quant && p.nested_shift != first.nested_shift) ||
        std::memcmp(&own, &tables, sizeof own) != 0) {
      return false;
    }
    g.m[i] = Dp4aMatrix{p.packed,        p.absmax_codes, p.absmax, p.nested_absmax, p.nested_map,
                        p.nested_offset, int(p.rows),    groups,   nullptr};
    if (!swiglu) groups += int((p.rows + g.rows_per_pass - 1) / g.rows_per_pass);
  }
  g.total_groups =
      swiglu ? int((ps[0].rows + g.rows_per_pass / 2 - 1) / (g.rows_per_pass / 2)) : groups;
  for (int i = g.count; i < kMaxGroup; ++i)
    g.m[i] = g.m[0];  // never picked: keeps the selects free of null pointers
  return true;
}

template <int kTokens, bool kDoubleQuant, bool kSwiglu>
bool run(Dp4aGroup& g, const HalfTables& tables, const float* x, int multiprocessors,
         cudaStream_t stream, bool launch_it) {
  constexpr auto kernel = nf4_gemv_dp4a_kernel<kTokens, kDoubleQuant, kSwiglu>;
  const int threads = g.cols / kChunkCols * g.rows_per_pass;
  const int per_sm = blocks_per_multiprocessor<kernel>(threads, "linear");
  const int grid = std::min(g.total_groups, per_sm * multiprocessors);
  const int iterations = (g.total_groups + grid - 1) / grid;
  const size_t shared_bytes =
      sizeof(float) * (size_t(256) * kMaxGroup + size_t(iterations) * size_t(g.rows_per_pass) *
                                                     kTokens * size_t(g.cols / kChunkCols / 32));
  if (shared_bytes > size_t(kMaxSharedBytes)) return false;
  if (!launch_it) return true;
  const PdlLaunchConfig config(dim3(unsigned(grid)), dim3(unsigned(threads)), shared_bytes, stream,
                               "linear");
  check_cuda(cudaLaunchKernelEx(config.get(), kernel, g, tables, x), "linear",
             "cudaLaunchKernelEx(nf4_gemv_dp4a_kernel)");
  return true;
}

template <int kTokens>
bool run_for_mode(Dp4aGroup& g, bool double_quant, bool swiglu, const HalfTables& tables,
                  const float* x, int multiprocessors, cudaStream_t stream, bool launch_it) {
  if (swiglu) {
    return double_quant
               ? run<kTokens, true, true>(g, tables, x, multiprocessors, stream, launch_it)
               : run<kTokens, false, true>(g, tables, x, multiprocessors, stream, launch_it);
  }
  return double_quant
             ? run<kTokens, true, false>(g, tables, x, multiprocessors, stream, launch_it)
             : run<kTokens, false, false>(g, tables, x, multiprocessors, stream, launch_it);
}

bool dispatch(std::span<const Nf4Params> ps, const float* x, std::span<float* const> outs, int n,
              bool swiglu, const Dp4aOptions& options, int multiprocessors, cudaStream_t stream,
              bool launch_it) {
  Dp4aGroup g;
  HalfTables tables{};
  if (!make_group(ps, swiglu, g, tables)) return false;
  g.accumulate = options.accumulate;
  if (x != nullptr && reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;
  for (size_t i = 0; i < outs.size() && i < size_t(g.count); ++i)
    g.m[i].out = outs[i];
  const bool dq = ps[0].double_quant;
  switch (n) {
    case 1:
      return run_for_mode<1>(g, dq, swiglu, tables, x, multiprocessors, stream, launch_it);
    case 2:
      return run_for_mode<2>(g, dq, swiglu, tables, x, multiprocessors, stream, launch_it);
    case 3:
      return run_for_mode<3>(g, dq, swiglu, tables, x, multiprocessors, stream, launch_it);
    case 4:
      return run_for_mode<4>(g, dq, swiglu, tables, x, multiprocessors, stream, launch_it);
    default:
      return false;
  }
}

[[noreturn]] void fail_unsupported() {
  fail_op("linear",
          "the dp4a NF4 GEMV needs cols a multiple of 1024 (at most 16384), 1 to 4 tokens, a code "
          "book with non-positive codes 0..7 and non-negative codes 8..15, 16-byte aligned data, "
          "and for a group: the same cols, block size, scale format and code book");
}

}  // namespace

bool nf4_dp4a_gemv_supported(const Nf4Params& p, int n, int multiprocessors) {
  return dispatch(std::span(&p, 1), nullptr, {}, n, false, {}, multiprocessors, nullptr, false);
}

void launch_nf4_dp4a_gemv(const Nf4Params& p, const float* x, float* out, int n,
                          int multiprocessors, cudaStream_t stream) {
  if (!dispatch(std::span(&p, 1), x, std::span(&out, 1), n, false, {}, multiprocessors, stream,
                true)) {
    fail_unsupported();
  }
}

bool nf4_dp4a_group_supported(std::span<const Nf4Params> ps, int n, bool swiglu,
                              const Dp4aOptions& options, int multiprocessors) {
  return dispatch(ps, nullptr, {}, n, swiglu, options, multiprocessors, nullptr, false);
}

void launch_nf4_dp4a_group(std::span<const Nf4Params> ps, const float* x,
                           std::span<float* const> outs, int n, bool swiglu,
                           const Dp4aOptions& options, int multiprocessors, cudaStream_t stream) {
  if (outs.size() != (swiglu ? 1 : ps.size())) fail_op("linear", "dp4a group: wrong output count");
  if (!dispatch(ps, x, outs, n, swiglu, options, multiprocessors, stream, true)) {
    fail_unsupported();
  }
}

}  // namespace llamaq::cuda
