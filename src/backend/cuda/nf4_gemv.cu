// Fused NF4 dequantize-and-multiply for few tokens (decode and small batches) on the tensor cores:
// out[t, r] = sum_k x[t, k] W[r, k] with each packed weight byte read once, with 16-byte loads,
// and never written back dequantized.
//
// The product is computed as mma.sync m16n8k16 tiles with the tokens as M (16 per tile, padded)
// and 8 weight rows as N. A lane (g = lane / 4, t = lane % 4) of a warp loads 16 packed bytes
// (32 consecutive columns) of weight row g of each of its row groups; over a 128-column chunk the
// four lanes t cover the row. The sum over k does not care in which order the columns enter the
// MMA, so mma step s (0..7) gives lane t the physical columns 32t + 4s .. 32t + 4s + 3: packed
// bytes 2s and 2s + 1 of its load are exactly its B fragment (b[0] = columns 32t+4s, +1 and
// b[1] = 32t+4s+2, +3), and its A fragment is the four x values at the same columns (one float4
// per token). Each byte becomes a bf16x2 pair of code values through a 256-entry table in shared
// memory (one copy per lane, so the lookups never conflict on a bank), multiplied by the block
// scale (decoded in the kernel, double quantization included) in bf16x2.
//
// Numerics: x, the code values, the scale and their product are bf16, accumulation is fp32 (as
// the dequantize + bf16 GEMM path, not bit-exact with the CPU's fp32 product of bf16 weights).
//
// The block's 8 warps split the columns of one tile of 8 * kGroups rows and add their partial
// sums through shared memory. Each lane keeps the next stage's bytes in flight while it computes.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernel_attributes.h"
#include "backend/cuda/mma_bf16.cuh"
#include "backend/cuda/nf4_decode.cuh"

namespace llamaq::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kChunkCols = 128;        // columns one warp covers per chunk (4 lanes x 32)
constexpr int kLaneCols = 32;          // columns of one lane's 16-byte load
constexpr int kUnroll = 2;             // chunks per pipeline stage
constexpr int kTableWords = 256 * 32;  // [byte][lane] bf16x2: lane-private copies

template <int kGroups, int kMTiles>
struct GemvLayout {
  static constexpr int kRows = 8 * kGroups;  // weight rows per block
  static constexpr int kPartialsPerWarp = kMTiles * kGroups * 4 * 32;
  static constexpr size_t kSharedBytes =
      size_t(kTableWords) * 4 + nf4::kNestedCodes * 4 + size_t(kWarps) * kPartialsPerWarp * 4;
};

// The byte lookup table (every lane's copy) and the nested absmax code map.
__device__ __forceinline__ void fill_tables(const Nf4Params& p, uint32_t* table,
                                            float* nested_map) {
  __shared__ float codes[nf4::kCodes];
  nf4_load_tables<kThreads>(p, codes, nested_map);
  // Byte b holds element 2i in its high nibble: the lower column goes to the low half.
  for (int i = threadIdx.x; i < kTableWords / 4; i += kThreads) {
    const int byte = i / 8;  // 8 uint4 (32 lanes) per byte value
    const uint32_t pair = pack_bf16x2(codes[byte >> 4], codes[byte & 15]);
    reinterpret_cast<uint4*>(table)[i] = make_uint4(pair, pair, pair, pair);
  }
  __syncthreads();
}

// Byte offset of the table row of byte `b` (0..3) of `word`: byte value * 128.
template <int b>
__device__ __forceinline__ uint32_t table_row(uint32_t word) {
  if constexpr (b == 0) {
    return (word << 7) & 0x7f80u;
  } else {
    return (word >> (8 * b - 7)) & 0x7f80u;
  }
}

__device__ __forceinline__ uint32_t lookup(const char* lane_table, uint32_t row_offset) {
  return *reinterpret_cast<const uint32_t*>(lane_table + row_offset);
}

// One lane's share of one chunk of one row group: 16 packed bytes and the block scale as bf16x2.
struct LaneSlice {
  uint4 bytes;
  uint32_t scale2;
};

__device__ __forceinline__ LaneSlice load_slice(const Nf4Params& p, int64_t row, int64_t col,
                                                const float* nested_map) {
  LaneSlice s{make_uint4(0, 0, 0, 0), 0u};
  if (row < p.rows && col < p.cols) {
    const int64_t k = row * p.cols + col;  // a multiple of 32: one quantization block
    s.bytes = __ldg(reinterpret_cast<const uint4*>(p.packed + k / 2));
    const float scale = nf4_block_scale(p, nf4_block_of(p, k), nested_map);
    s.scale2 = pack_bf16x2(scale, scale);
  }
  return s;
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int word) {
  return word == 0 ? v.x : word == 1 ? v.y : word == 2 ? v.z : v.w;
}

// The B fragment of mma step s from a lane slice: packed bytes 2s and 2s + 1, scaled.
template <int s>
__device__ __forceinline__ void weight_fragment(const LaneSlice& slice, const char* lane_table,
                                                uint32_t (&b)[2]) {
  const uint32_t word = word_of(slice.bytes, s / 2);
  constexpr int kFirst = 2 * (s % 2);
  b[0] = mul_bf16x2(lookup(lane_table, table_row<kFirst>(word)), slice.scale2);
  b[1] = mul_bf16x2(lookup(lane_table, table_row<kFirst + 1>(word)), slice.scale2);
}

// The A fragments of mma step s (tokens g and g + 8 of each token tile): x at columns
// col + 4s .. col + 4s + 3, zeros past n or past the last column.
template <int kMTiles>
__device__ __forceinline__ void activation_fragments(const float* __restrict__ x, int64_t cols,
                                                     int n, int64_t col, int s, bool col_ok,
                                                     uint32_t (&a)[kMTiles][4]) {
  const int g = (threadIdx.x % 32) / 4;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int token = 16 * mt + 8 * half + g;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (n > 16 * mt + 8 * half && token < n && col_ok) {  // first test is warp-uniform
        v = __ldg(reinterpret_cast<const float4*>(x + token * cols + col + 4 * s));
      }
      a[mt][half] = pack_bf16x2(v.x, v.y);
      a[mt][2 + half] = pack_bf16x2(v.z, v.w);
    }
  }
}

template <int kGroups, int kMTiles, int s>
__device__ __forceinline__ void mma_step(const LaneSlice (&slices)[kGroups],
                                         const float* __restrict__ x, int64_t cols, int n,
                                         int64_t col, bool col_ok, const char* lane_table,
                                         float (&acc)[kMTiles][kGroups][4]) {
  uint32_t a[kMTiles][4];
  activation_fragments<kMTiles>(x, cols, n, col, s, col_ok, a);
#pragma unroll
  for (int q = 0; q < kGroups; ++q) {
    uint32_t b[2];
    weight_fragment<s>(slices[q], lane_table, b);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
      mma_bf16_16816(acc[mt][q], a[mt], b);
  }
}

template <int kGroups, int kMTiles>
__device__ __forceinline__ void compute_chunk(const LaneSlice (&slices)[kGroups],
                                              const float* __restrict__ x, int64_t cols, int n,
                                              int64_t col, const char* lane_table,
                                              float (&acc)[kMTiles][kGroups][4]) {
  const bool col_ok = col < cols;
  mma_step<kGroups, kMTiles, 0>(slices, x, cols, n, col, col_ok, lane_table, acc);
  mma_step<kGroups, kMTiles, 1>(slices, x, cols, n, col, col_ok, lane_table, acc);
  mma_step<kGroups, kMTiles, 2>(slices, x, cols, n, col, col_ok, lane_table, acc);
  mma_step<kGroups, kMTiles, 3>(slices, x, cols, n, col, col_ok, lane_table, acc);
  mma_step<kGroups, kMTiles, 4>(slices, x, cols, n, col, col_ok, lane_table, acc);
  mma_step<kGroups, kMTiles, 5>(slices, x, cols, n, col, col_ok, lane_table, acc);
  mma_step<kGroups, kMTiles, 6>(slices, x, cols, n, col, col_ok, lane_table, acc);
  mma_step<kGroups, kMTiles, 7>(slices, x, cols, n, col, col_ok, lane_table, acc);
}

// A pipeline stage: kUnroll chunks of every row group of the lane.
template <int kGroups>
struct Stage {
  LaneSlice slices[kUnroll][kGroups];
};

template <int kGroups>
__device__ __forceinline__ Stage<kGroups> load_stage(const Nf4Params& p, int64_t row0,
                                                     int64_t chunk0, const float* nested_map) {
  const int lane = threadIdx.x % 32;
  Stage<kGroups> st;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t col = (chunk0 + int64_t(u) * kWarps) * kChunkCols + kLaneCols * (lane % 4);
#pragma unroll
    for (int q = 0; q < kGroups; ++q)
      st.slices[u][q] = load_slice(p, row0 + 8 * q + lane / 4, col, nested_map);
  }
  return st;
}

// Sums the warps' partial tiles and writes out[token, row] for tokens < n and rows < p.rows.
template <int kGroups, int kMTiles>
__device__ __forceinline__ void reduce_and_store(const Nf4Params& p, int64_t row0, int n,
                                                 float (&acc)[kMTiles][kGroups][4], float* partials,
                                                 float* __restrict__ out) {
  using L = GemvLayout<kGroups, kMTiles>;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int q = 0; q < kGroups; ++q) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        partials[warp * L::kPartialsPerWarp + ((mt * kGroups + q) * 4 + i) * 32 + lane] =
            acc[mt][q][i];
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < L::kPartialsPerWarp; e += kThreads) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w)
      sum += partials[w * L::kPartialsPerWarp + e];
    const int from = e % 32;  // the lane that held the value
    const int i = (e / 32) % 4;
    const int q = (e / 128) % kGroups;
    const int mt = e / (128 * kGroups);
    const int token = 16 * mt + from / 4 + (i >= 2 ? 8 : 0);
    const int64_t row = row0 + 8 * q + 2 * (from % 4) + (i & 1);
    if (token < n && row < p.rows) out[int64_t(token) * p.rows + row] = sum;
  }
}

template <int kGroups, int kMTiles>
__global__ void __launch_bounds__(kThreads, 2)
    nf4_gemv_mma_kernel(Nf4Params p, const float* __restrict__ x, float* __restrict__ out, int n) {
  using L = GemvLayout<kGroups, kMTiles>;
  extern __shared__ uint4 shared_raw[];
  uint32_t* table = reinterpret_cast<uint32_t*>(shared_raw);
  float* nested_map = reinterpret_cast<float*>(table + kTableWords);
  float* partials = nested_map + nf4::kNestedCodes;
  fill_tables(p, table, nested_map);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const char* lane_table = reinterpret_cast<const char*>(table) + 4 * lane;
  const int64_t row0 = int64_t(blockIdx.x) * L::kRows;
  const int64_t chunks = (p.cols + kChunkCols - 1) / kChunkCols;
  const int64_t stride = int64_t(kWarps) * kUnroll;  // chunks between a warp's stages
  float acc[kMTiles][kGroups][4] = {};
  Stage<kGroups> next = load_stage<kGroups>(p, row0, warp, nested_map);
  for (int64_t chunk0 = warp; chunk0 < chunks; chunk0 += stride) {
    const Stage<kGroups> stage = next;
    next = load_stage<kGroups>(p, row0, chunk0 + stride, nested_map);  // in flight meanwhile
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t col = (chunk0 + int64_t(u) * kWarps) * kChunkCols + kLaneCols * (lane % 4);
      compute_chunk<kGroups, kMTiles>(stage.slices[u], x, p.cols, n, col, lane_table, acc);
    }
  }
  reduce_and_store<kGroups, kMTiles>(p, row0, n, acc, partials, out);
}

template <int kGroups, int kMTiles>
void launch(const Nf4Params& p, const float* x, float* out, int n, cudaStream_t stream) {
  using L = GemvLayout<kGroups, kMTiles>;
  allow_dynamic_shared_memory<nf4_gemv_mma_kernel<kGroups, kMTiles>>(
      int(L::kSharedBytes), "linear", "cudaFuncSetAttribute(nf4_gemv_mma_kernel)");
  const unsigned blocks = unsigned((p.rows + L::kRows - 1) / L::kRows);
  nf4_gemv_mma_kernel<kGroups, kMTiles>
      <<<blocks, kThreads, L::kSharedBytes, stream>>>(p, x, out, n);
}

template <int kGroups>
void launch_for_groups(const Nf4Params& p, const float* x, float* out, int n, cudaStream_t stream) {
  if (n <= 16) {
    launch<kGroups, 1>(p, x, out, n, stream);
  } else {
    launch<kGroups, 2>(p, x, out, n, stream);
  }
}

}  // namespace

void launch_nf4_gemv(const Nf4Params& p, const float* x, float* out, int n, int multiprocessors,
                     cudaStream_t stream) {
  if (n < 1 || n > kNf4GemvMaxTokens || p.cols % kLaneCols != 0 || p.block_size % kLaneCols != 0 ||
      p.rows >= (int64_t(1) << 31) / 16) {
    fail_op("linear", "the fused NF4 GEMV does not support this shape");
  }
  // Tiles of 16 rows (more bytes in flight per lane) unless that leaves multiprocessors without
  // a block (k/v projections: 1024 rows).
  if ((p.rows + 15) / 16 >= int64_t(multiprocessors)) {
    launch_for_groups<2>(p, x, out, n, stream);
  } else {
    launch_for_groups<1>(p, x, out, n, stream);
  }
  check_launch("linear", "nf4_gemv_mma_kernel");
}

}  // namespace llamaq::cuda
