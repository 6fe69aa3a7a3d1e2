// Causal GQA attention backward for one contiguous sequence (key t is token t) on the tensor
// cores, FlashAttention-2 style: bf16 mma.sync with fp32 accumulation, the probabilities
// recomputed tile by tile and never stored whole, no atomics. Q, K, V and dO are rounded to bf16
// once (convert_activations); then three kernels, each a block of 4 warps over 64 rows of its
// outer dimension (16 per warp), the inner dimension streaming through shared memory in tiles of
// 32 rows, double-buffered with cp.async (the next tile loads while this one is computed):
//  1. stats_kernel (outer: queries of a head; inner: keys): S = Q K^T and dP = dO V^T per tile,
//     an online softmax that also carries sum_j exp(s_j - m) dP_j, giving per query row
//     lse = m + log(l) and delta = sum_j P_j dP_j (from P and dP, as the CPU reference and the
//     fp32 kernel compute it; see backward_attention.cu for why not rowsum(dO * O)).
//  2. dkdv_kernel (outer: keys of a kv head; inner: the queries of one query head at or after
//     them): S^T = K Q^T and dP^T = V dO^T, so that P^T and dS^T come out in the accumulator
//     layout and feed dV += P^T dO and dK += dS^T Q as A operands. With GQA each query head
//     writes its own partial dK/dV and reduce_group_kernel sums the group's: a block per query
//     head rather than per kv head gives group times more blocks to balance the causal triangle.
//  3. dq_kernel (outer: queries of a head; inner: keys up to them): S, P, dP and dS again, and
//     dQ += dS K.
// All grids run their longest blocks (the most inner tiles) first.
// Per (query, key) pair this is 5 matrix products of head_dim (2 in stats, 4 in dkdv, 3 in dq:
// 9 in all, against 5 for a backward that stores P); no S x S matrix exists.
//
// Numerics: Q, K, V, dO, P and dS are rounded to bf16 (2^-9 relative each) with fp32
// accumulation, as the tensor-core forward does; the fp32 kernel in backward_attention.cu stays
// for head dims other than 64 and 128.
#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernel_attributes.h"
#include "backend/cuda/mma_bf16.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kOuter = kWarps * 16;  // outer rows per block
constexpr int kInner = 32;           // inner rows per tile

struct MmaBackwardParams {
  const __nv_bfloat16* q;      // [n, H, D] bf16
  const __nv_bfloat16* k;      // [n, Hkv, D] bf16
  const __nv_bfloat16* v;      // [n, Hkv, D] bf16
  const __nv_bfloat16* d_out;  // [n, H, D] bf16
  float* dq;                   // [n, H, D] f32
  float* dk_part;  // [n, H, D] f32: each query head's share of dK (dK itself if H = Hkv)
  float* dv_part;  // [n, H, D] f32: the same for dV
  float* lse;      // [H, n] f32: natural log-sum-exp of each query row's scaled scores
  float* delta;    // [H, n] f32: sum_j P_j dP_j
  int n;
  int heads;
  int kv_heads;
  int group;
  float scale;
};

template <int D>
struct Tile {
  static constexpr int kStride = D + 8;  // bf16 per shared row: 16-byte rows on distinct banks
};

// Starts copying rows [row0, row0 + rows) of head `head` of an [n, heads, D] bf16 tensor into a
// shared tile [rows][D + 8] (zeros past n, stored directly); complete after cp_async_wait and a
// barrier. The caller commits the group.
template <int D>
__device__ void load_tile_async(const __nv_bfloat16* src, int row0, int rows, int n, int heads,
                                int head, __nv_bfloat16* tile) {
  for (int e = threadIdx.x; e < rows * D / 8; e += kThreads) {
    const int r = e / (D / 8), c = 8 * (e % (D / 8));
    __nv_bfloat16* dst = tile + r * Tile<D>::kStride + c;
    if (row0 + r < n) {
      cp_async_16(dst, src + (int64_t(row0 + r) * heads + head) * D + c);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
}

// A fragments (16 x 16 each, k = head dims) of the 16 rows at `row0` of a shared tile.
template <int D>
__device__ __forceinline__ void a_fragment(const __nv_bfloat16* tile, int row0, int kk,
                                           uint32_t (&a)[4]) {
  const int lane = threadIdx.x % 32;
  const int m = lane / 8;  // matrix m: rows +8 (m & 1), columns +8 (m >> 1)
  ldmatrix_x4(a,
              tile + (row0 + 8 * (m & 1) + lane % 8) * Tile<D>::kStride + 16 * kk + 8 * (m >> 1));
}

// acc[j] (16 x 8, j < kInner / 8) = A B^T with A the 16 rows at a_row0 of a_tile and B the kInner
// rows of b_tile, both [rows][D] in shared memory (the score-tile product of the forward kernel).
template <int D>
__device__ __forceinline__ void rows_times_rows(const __nv_bfloat16* a_tile, int a_row0,
                                                const __nv_bfloat16* b_tile,
                                                float (&acc)[kInner / 8][4]) {
  const int lane = threadIdx.x % 32;
  const int m = lane / 8;
#pragma unroll
  for (int j = 0; j < kInner / 8; ++j)
    acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    a_fragment<D>(a_tile, a_row0, kk, a);
#pragma unroll
    for (int jp = 0; jp < kInner / 16; ++jp) {
      // Matrices: B rows 16jp + 8(m >> 1) + 0..7, dims 16kk + 8(m & 1) + 0..7.
      uint32_t b[4];
      ldmatrix_x4(b, b_tile + (16 * jp + 8 * (m >> 1) + lane % 8) * Tile<D>::kStride + 16 * kk +
                         8 * (m & 1));
      const uint32_t b0[2] = {b[0], b[1]};
      const uint32_t b1[2] = {b[2], b[3]};
      mma_bf16_16816(acc[2 * jp], a, b0);
      mma_bf16_16816(acc[2 * jp + 1], a, b1);
    }
  }
}

// out (16 x D) += P V with P (16 x kInner) in the accumulator layout (rounded to bf16 here) and V
// the kInner rows of a shared tile [kInner][D] (the value product of the forward kernel).
template <int D>
__device__ __forceinline__ void acc_times_rows(const float (&p)[kInner / 8][4],
                                               const __nv_bfloat16* v_tile,
                                               float (&out)[D / 8][4]) {
  const int lane = threadIdx.x % 32;
  const int m = lane / 8;
#pragma unroll
  for (int kk = 0; kk < kInner / 16; ++kk) {
    const uint32_t a[4] = {pack_bf16x2(p[2 * kk][0], p[2 * kk][1]),
                           pack_bf16x2(p[2 * kk][2], p[2 * kk][3]),
                           pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                           pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
    // Matrices: rows 16kk + 8(m & 1) + 0..7, dims 16dp + 8(m >> 1) + 0..7, transposed.
    const int row = 16 * kk + 8 * (m & 1) + lane % 8;
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, v_tile + row * Tile<D>::kStride + 16 * dp + 8 * (m >> 1));
      const uint32_t b0[2] = {b[0], b[1]};
      const uint32_t b1[2] = {b[2], b[3]};
      mma_bf16_16816(out[2 * dp], a, b0);
      mma_bf16_16816(out[2 * dp + 1], a, b1);
    }
  }
}

// The lane's accumulator element i of n-tile j: (row, column) within the 16 x kInner tile.
__device__ __forceinline__ int acc_row(int i) {
  return (threadIdx.x % 32) / 4 + 8 * (i >> 1);
}
__device__ __forceinline__ int acc_col(int j, int i) {
  return 8 * j + 2 * (threadIdx.x % 4) + (i & 1);
}

// Sum over the 4 lanes of a quad (one accumulator row).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

template <int D>
struct Shared {  // bf16 tiles of one block: two outer tiles, two inner tiles per stage
  static constexpr int kOuterTile = kOuter * Tile<D>::kStride;
  static constexpr int kInnerTile = kInner * Tile<D>::kStride;
  static constexpr int kStageElements = 2 * kInnerTile;
  static constexpr size_t kBytes =
      size_t(2 * kOuterTile + 2 * kStageElements) * 2 + 2 * 2 * kInner * sizeof(float);
};

// The block's two outer tiles and the two-stage ring of inner tile pairs in shared memory.
template <int D>
struct BlockTiles {
  __nv_bfloat16* outer_a;  // [kOuter][D + 8]
  __nv_bfloat16* outer_b;  // [kOuter][D + 8]
  __nv_bfloat16* inner;    // [2 stages][2][kInner][D + 8]
  float* row_stats;        // [2 stages][2][kInner]: lse and delta of inner query rows (dkdv)

  __device__ explicit BlockTiles(uint4* raw) {
    using S = Shared<D>;
    outer_a = reinterpret_cast<__nv_bfloat16*>(raw);
    outer_b = outer_a + S::kOuterTile;
    inner = outer_b + S::kOuterTile;
    row_stats = reinterpret_cast<float*>(inner + 2 * S::kStageElements);
  }
  __device__ __nv_bfloat16* inner_a(int stage) const {
    return inner + stage * Shared<D>::kStageElements;
  }
  __device__ __nv_bfloat16* inner_b(int stage) const {
    return inner_a(stage) + Shared<D>::kInnerTile;
  }
};

// Waits for the tile of this iteration: one more group (the next tile) may stay in flight.
__device__ __forceinline__ void wait_for_tile(bool next_in_flight) {
  if (next_in_flight) {
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// Keys and values [k0, k0 + kInner) of kv head `kv_head` into a stage (async; the caller commits).
template <int D>
__device__ void load_key_tile(const MmaBackwardParams& p, const BlockTiles<D>& t, int k0,
                              int kv_head, int stage) {
  load_tile_async<D>(p.k, k0, kInner, p.n, p.kv_heads, kv_head, t.inner_a(stage));
  load_tile_async<D>(p.v, k0, kInner, p.n, p.kv_heads, kv_head, t.inner_b(stage));
}

// A query block's Q and dO tiles and its first key tile, as one committed group (stats, dQ).
template <int D>
__device__ void start_query_block(const MmaBackwardParams& p, const BlockTiles<D>& t, int q0,
                                  int head, int kv_head) {
  load_tile_async<D>(p.q, q0, kOuter, p.n, p.heads, head, t.outer_a);
  load_tile_async<D>(p.d_out, q0, kOuter, p.n, p.heads, head, t.outer_b);
  load_key_tile<D>(p, t, 0, kv_head, 0);
  cp_async_commit();
}

// 1. lse and delta of the queries [q0, q0 + 64) of head `blockIdx.x`.
template <int D>
__global__ void __launch_bounds__(kThreads, 2) stats_kernel(MmaBackwardParams p) {
  extern __shared__ uint4 shared_raw[];
  const BlockTiles<D> t(shared_raw);
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kOuter, head = blockIdx.x;
  const int kv_head = head / p.group, warp_row0 = (threadIdx.x / 32) * 16;
  start_query_block<D>(p, t, q0, head, kv_head);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, acc[2] = {0.0f, 0.0f};
  const int tiles = (min(p.n, q0 + kOuter) + kInner - 1) / kInner;
  for (int tile = 0; tile < tiles; ++tile) {
    const int k0 = tile * kInner, stage = tile & 1;
    if (tile + 1 < tiles) {
      load_key_tile<D>(p, t, k0 + kInner, kv_head, stage ^ 1);
      cp_async_commit();
    }
    wait_for_tile(tile + 1 < tiles);
    float s[kInner / 8][4], dp[kInner / 8][4];
    rows_times_rows<D>(t.outer_a, warp_row0, t.inner_a(stage), s);
    rows_times_rows<D>(t.outer_b, warp_row0, t.inner_b(stage), dp);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int query = q0 + warp_row0 + acc_row(2 * r);
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kInner / 8; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int key = k0 + acc_col(j, c);
          float& sv = s[j][2 * r + c];
          sv = key <= query ? sv * p.scale : -INFINITY;
          tile_max = fmaxf(tile_max, sv);
        }
      tile_max = quad_max(tile_max);
      const float m_new = fmaxf(m[r], tile_max);  // -inf only for rows past n
      const float alpha = m[r] == -INFINITY ? 0.0f : expf(m[r] - m_new);
      float tile_l = 0.0f, tile_acc = 0.0f;
#pragma unroll
      for (int j = 0; j < kInner / 8; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float e = s[j][2 * r + c] == -INFINITY ? 0.0f : expf(s[j][2 * r + c] - m_new);
          tile_l += e;
          tile_acc += e * dp[j][2 * r + c];
        }
      l[r] = l[r] * alpha + tile_l;  // the lane's share; summed over the quad at the end
      acc[r] = acc[r] * alpha + tile_acc;
      m[r] = m_new;
    }
    __syncthreads();  // this stage is used up before the next iteration refills it
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float total_l = quad_sum(l[r]), total_acc = quad_sum(acc[r]);
    const int query = q0 + warp_row0 + acc_row(2 * r);
    if (threadIdx.x % 4 == 0 && query < p.n) {
      p.lse[int64_t(head) * p.n + query] = m[r] + logf(total_l);
      p.delta[int64_t(head) * p.n + query] = total_acc / total_l;
    }
  }
}

// Queries [q0, q0 + kInner) of head h into a dkdv stage: Q, dO (async) and their lse and delta.
template <int D>
__device__ void load_query_tile(const MmaBackwardParams& p, const BlockTiles<D>& t, int q0, int h,
                                int stage) {
  load_tile_async<D>(p.q, q0, kInner, p.n, p.heads, h, t.inner_a(stage));
  load_tile_async<D>(p.d_out, q0, kInner, p.n, p.heads, h, t.inner_b(stage));
  float* lse = t.row_stats + stage * 2 * kInner;
  for (int i = threadIdx.x; i < kInner; i += kThreads) {
    const bool valid = q0 + i < p.n;
    lse[i] = valid ? p.lse[int64_t(h) * p.n + q0 + i] : INFINITY;  // P = 0 past n
    lse[kInner + i] = valid ? p.delta[int64_t(h) * p.n + q0 + i] : 0.0f;
  }
}

// 2. Query head blockIdx.x's share of dK and dV of the keys [k0, k0 + 64) of its kv head.
template <int D>
__global__ void __launch_bounds__(kThreads, 2) dkdv_kernel(MmaBackwardParams p) {
  extern __shared__ uint4 shared_raw[];
  const BlockTiles<D> t(shared_raw);
  const int k0 = blockIdx.y * kOuter, h = blockIdx.x, kv_head = h / p.group;
  const int warp_row0 = (threadIdx.x / 32) * 16;
  load_tile_async<D>(p.k, k0, kOuter, p.n, p.kv_heads, kv_head, t.outer_a);
  load_tile_async<D>(p.v, k0, kOuter, p.n, p.kv_heads, kv_head, t.outer_b);
  const int first = k0 / kInner, tiles = (p.n + kInner - 1) / kInner;
  load_query_tile<D>(p, t, first * kInner, h, 0);
  cp_async_commit();
  float dk[D / 8][4] = {}, dv[D / 8][4] = {};
  for (int tile = first; tile < tiles; ++tile) {
    const int q0 = tile * kInner, stage = (tile - first) & 1;
    if (tile + 1 < tiles) {
      load_query_tile<D>(p, t, q0 + kInner, h, stage ^ 1);
      cp_async_commit();
    }
    wait_for_tile(tile + 1 < tiles);
    const __nv_bfloat16* q_tile = t.inner_a(stage);
    const __nv_bfloat16* do_tile = t.inner_b(stage);
    const float* lse_s = t.row_stats + stage * 2 * kInner;
    const float* delta_s = lse_s + kInner;
    float st[kInner / 8][4], dpt[kInner / 8][4];
    rows_times_rows<D>(t.outer_a, warp_row0, q_tile, st);    // S^T = K Q^T
    rows_times_rows<D>(t.outer_b, warp_row0, do_tile, dpt);  // dP^T = V dO^T
#pragma unroll
    for (int j = 0; j < kInner / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = k0 + warp_row0 + acc_row(i), col = acc_col(j, i);
        const int query = q0 + col;
        const float prob = query >= key ? expf(st[j][i] * p.scale - lse_s[col]) : 0.0f;
        st[j][i] = prob;                                          // P^T
        dpt[j][i] = prob * (dpt[j][i] - delta_s[col]) * p.scale;  // dS^T
      }
    acc_times_rows<D>(st, do_tile, dv);  // dV += P^T dO
    acc_times_rows<D>(dpt, q_tile, dk);  // dK += dS^T Q
    __syncthreads();  // this stage is used up before the next iteration refills it
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = k0 + warp_row0 + acc_row(2 * r);
    if (key >= p.n) continue;
    const int64_t row = (int64_t(key) * p.heads + h) * D + 2 * (threadIdx.x % 4);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<float2*>(p.dk_part + row + 8 * j) =
          make_float2(dk[j][2 * r], dk[j][2 * r + 1]);
      *reinterpret_cast<float2*>(p.dv_part + row + 8 * j) =
          make_float2(dv[j][2 * r], dv[j][2 * r + 1]);
    }
  }
}

// dK and dV of each kv head: the sum of its group's partials, 4 dims per thread.
__global__ void reduce_group_kernel(const float* dk_part,  // [n, H, D] f32
                                    const float* dv_part,  // [n, H, D] f32
                                    float* dk,             // [n, Hkv, D] f32
                                    float* dv,             // [n, Hkv, D] f32
                                    int64_t rows, int group, int head_dim) {
  const int64_t quads = rows * head_dim / 4;  // rows = n * Hkv
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < quads;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / (head_dim / 4), d = 4 * (i % (head_dim / 4));
    const int64_t first = row * group * head_dim + d;  // (token, kv head) rows are contiguous
    float4 sk = make_float4(0, 0, 0, 0), sv = make_float4(0, 0, 0, 0);
    for (int g = 0; g < group; ++g) {
      const float4 a = *reinterpret_cast<const float4*>(dk_part + first + g * head_dim);
      const float4 b = *reinterpret_cast<const float4*>(dv_part + first + g * head_dim);
      sk = make_float4(sk.x + a.x, sk.y + a.y, sk.z + a.z, sk.w + a.w);
      sv = make_float4(sv.x + b.x, sv.y + b.y, sv.z + b.z, sv.w + b.w);
    }
    *reinterpret_cast<float4*>(dk + 4 * i) = sk;
    *reinterpret_cast<float4*>(dv + 4 * i) = sv;
  }
}

// 3. dQ of the queries [q0, q0 + 64) of head `blockIdx.x`.
template <int D>
__global__ void __launch_bounds__(kThreads, 2) dq_kernel(MmaBackwardParams p) {
  extern __shared__ uint4 shared_raw[];
  const BlockTiles<D> t(shared_raw);
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kOuter, head = blockIdx.x;
  const int kv_head = head / p.group, warp_row0 = (threadIdx.x / 32) * 16;
  start_query_block<D>(p, t, q0, head, kv_head);
  float lse[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int query = q0 + warp_row0 + acc_row(2 * r);
    lse[r] = query < p.n ? p.lse[int64_t(head) * p.n + query] : INFINITY;
    delta[r] = query < p.n ? p.delta[int64_t(head) * p.n + query] : 0.0f;
  }
  float dq[D / 8][4] = {};
  const int tiles = (min(p.n, q0 + kOuter) + kInner - 1) / kInner;
  for (int tile = 0; tile < tiles; ++tile) {
    const int k0 = tile * kInner, stage = tile & 1;
    if (tile + 1 < tiles) {
      load_key_tile<D>(p, t, k0 + kInner, kv_head, stage ^ 1);
      cp_async_commit();
    }
    wait_for_tile(tile + 1 < tiles);
    const __nv_bfloat16* k_tile = t.inner_a(stage);
    float s[kInner / 8][4], dp[kInner / 8][4];
    rows_times_rows<D>(t.outer_a, warp_row0, k_tile, s);
    rows_times_rows<D>(t.outer_b, warp_row0, t.inner_b(stage), dp);
#pragma unroll
    for (int j = 0; j < kInner / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int query = q0 + warp_row0 + acc_row(i), key = k0 + acc_col(j, i);
        const float prob = key <= query ? expf(s[j][i] * p.scale - lse[i >> 1]) : 0.0f;
        s[j][i] = prob * (dp[j][i] - delta[i >> 1]) * p.scale;  // dS
      }
    acc_times_rows<D>(s, k_tile, dq);  // dQ += dS K
    __syncthreads();                   // this stage is used up before the next iteration refills it
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int query = q0 + warp_row0 + acc_row(2 * r);
    if (query >= p.n) continue;
    float* out = p.dq + (int64_t(query) * p.heads + head) * D + 2 * (threadIdx.x % 4);
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      *reinterpret_cast<float2*>(out + 8 * j) = make_float2(dq[j][2 * r], dq[j][2 * r + 1]);
  }
}

template <int D>
void launch(CudaContext& ctx, const MmaBackwardParams& p) {
  constexpr int kBytes = int(Shared<D>::kBytes);
  allow_dynamic_shared_memory<stats_kernel<D>>(kBytes, "attention_backward",
                                               "cudaFuncSetAttribute(stats_kernel)");
  allow_dynamic_shared_memory<dkdv_kernel<D>>(kBytes, "attention_backward",
                                              "cudaFuncSetAttribute(dkdv_kernel)");
  allow_dynamic_shared_memory<dq_kernel<D>>(kBytes, "attention_backward",
                                            "cudaFuncSetAttribute(dq_kernel)");
  // Heads vary fastest, so blocks launch in order of their tile's length, longest first.
  const dim3 grid(unsigned(p.heads), unsigned((p.n + kOuter - 1) / kOuter));
  stats_kernel<D><<<grid, kThreads, kBytes, ctx.stream()>>>(p);
  check_launch("attention_backward", "stats_kernel");
  dkdv_kernel<D><<<grid, kThreads, kBytes, ctx.stream()>>>(p);
  check_launch("attention_backward", "dkdv_kernel");
  dq_kernel<D><<<grid, kThreads, kBytes, ctx.stream()>>>(p);
  check_launch("attention_backward", "dq_kernel");
}

// dK and dV from the partials of each query head (GQA), as reduce_group_kernel's launch.
void reduce_group(CudaContext& ctx, const Tensor& dk_part, const Tensor& dv_part, Tensor& dk,
                  Tensor& dv, int group) {
  const int64_t rows = dk.dim(0) * dk.dim(1), head_dim = dk.dim(2);
  constexpr int kReduceThreads = 256;
  const int64_t blocks =
      std::min<int64_t>((rows * head_dim / 4 + kReduceThreads - 1) / kReduceThreads,
                        int64_t(ctx.multiprocessors()) * 8);
  reduce_group_kernel<<<unsigned(blocks), kReduceThreads, 0, ctx.stream()>>>(
      dk_part.data_as<const float>(), dv_part.data_as<const float>(), dk.data_as<float>(),
      dv.data_as<float>(), rows, group, int(head_dim));
  check_launch("attention_backward", "reduce_group_kernel");
}

}  // namespace

bool attention_backward_mma_supported(int64_t head_dim) {
  return head_dim == 64 || head_dim == 128;
}

void attention_backward_mma(CudaContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& d_out, Tensor& dq, Tensor& dk, Tensor& dv) {
  const char* op = "attention_backward";
  require_attention_backward(q, k, v, d_out, dq, dk, dv, op);
  const int64_t n = q.dim(0), heads = q.dim(1), head_dim = q.dim(2), kv_heads = k.dim(1);
  require(attention_backward_mma_supported(head_dim), op,
          "the tensor-core backward takes head_dim 64 or 128, got " + std::to_string(head_dim));
  if (n == 0) return;
  checked_int(q.numel(), op, "q elements");
  auto rounded = [&](const Tensor& x) {
    Tensor out = ctx.empty(DType::BF16, x.shape(), op);
    convert_activations(ctx, x, out, op);
    return out;
  };
  const Tensor q16 = rounded(q), k16 = rounded(k), v16 = rounded(v), d_out16 = rounded(d_out);
  Tensor lse = ctx.empty(DType::F32, {heads, n}, op);
  Tensor delta = ctx.empty(DType::F32, {heads, n}, op);
  const int group = int(heads / kv_heads);
  Tensor dk_part = group > 1 ? ctx.empty(DType::F32, q.shape(), op) : Tensor();
  Tensor dv_part = group > 1 ? ctx.empty(DType::F32, q.shape(), op) : Tensor();
  const MmaBackwardParams p{q16.data_as<const __nv_bfloat16>(),
                            k16.data_as<const __nv_bfloat16>(),
                            v16.data_as<const __nv_bfloat16>(),
                            d_out16.data_as<const __nv_bfloat16>(),
                            dq.data_as<float>(),
                            (group > 1 ? dk_part : dk).data_as<float>(),
                            (group > 1 ? dv_part : dv).data_as<float>(),
                            lse.data_as<float>(),
                            delta.data_as<float>(),
                            int(n),
                            int(heads),
                            int(kv_heads),
                            group,
                            float(1.0 / std::sqrt(double(head_dim)))};
  if (head_dim == 64) {
    launch<64>(ctx, p);
  } else {
    launch<128>(ctx, p);
  }
  if (group > 1) reduce_group(ctx, dk_part, dv_part, dk, dv, group);
}

}  // namespace llamaq::cuda
