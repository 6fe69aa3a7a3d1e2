// Causal GQA attention backward for one contiguous sequence (key t is token t) on the tensor
// cores, FlashAttention-2 style: bf16 mma.sync with fp32 accumulation, the probabilities
// recomputed tile by tile and never stored whole, no atomics. Three kernels, each a block of 4
// warps over 64 rows of its outer dimension (16 per warp), the inner dimension streaming through
// shared memory as bf16 tiles rounded from the f32 inputs:
//  1. stats_kernel (outer: queries of a head; inner: keys): S = Q K^T and dP = dO V^T per tile,
//     an online softmax that also carries sum_j exp(s_j - m) dP_j, giving per query row
//     lse = m + log(l) and delta = sum_j P_j dP_j (from P and dP, as the CPU reference and the
//     fp32 kernel compute it; see backward_attention.cu for why not rowsum(dO * O)).
//  2. dkdv_kernel (outer: keys of a kv head; inner: queries at or after them, for every query head
//     of the group): S^T = K Q^T and dP^T = V dO^T, so that P^T and dS^T come out in the
//     accumulator layout and feed dV += P^T dO and dK += dS^T Q as A operands.
//  3. dq_kernel (outer: queries of a head; inner: keys up to them): S, P, dP and dS again, and
//     dQ += dS K.
// Per (query, key) pair this is 5 matrix products of head_dim (2 in stats, 4 in dkdv, 3 in dq:
// 9 in all, against 5 for a backward that stores P); no S x S matrix exists.
//
// Numerics: Q, K, V, dO, P and dS are rounded to bf16 (2^-9 relative each) with fp32
// accumulation, as the tensor-core forward does; the fp32 kernel in backward_attention.cu stays
// for head dims other than 64 and 128.
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
  const float* q;      // [n, H, D] f32
  const float* k;      // [n, Hkv, D] f32
  const float* v;      // [n, Hkv, D] f32
  const float* d_out;  // [n, H, D] f32
  float* dq;           // [n, H, D] f32
  float* dk;           // [n, Hkv, D] f32
  float* dv;           // [n, Hkv, D] f32
  float* lse;          // [H, n] f32: natural log-sum-exp of each query row's scaled scores
  float* delta;        // [H, n] f32: sum_j P_j dP_j
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

// Rows [row0, row0 + rows) of head `head` of an [n, heads, D] f32 tensor into a shared bf16 tile
// [rows][D + 8] (zeros past n).
template <int D>
__device__ void load_tile(const float* src, int row0, int rows, int n, int heads, int head,
                          __nv_bfloat16* tile) {
  for (int e = threadIdx.x; e < rows * D / 8; e += kThreads) {
    const int r = e / (D / 8), c = 8 * (e % (D / 8));
    uint4 packed = make_uint4(0, 0, 0, 0);
    if (row0 + r < n) {
      const float4* s =
          reinterpret_cast<const float4*>(src + (int64_t(row0 + r) * heads + head) * D + c);
      const float4 a = s[0], b = s[1];
      packed = make_uint4(pack_bf16x2(a.x, a.y), pack_bf16x2(a.z, a.w), pack_bf16x2(b.x, b.y),
                          pack_bf16x2(b.z, b.w));
    }
    *reinterpret_cast<uint4*>(tile + r * Tile<D>::kStride + c) = packed;
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
struct Shared {  // bf16 tiles of one block
  static constexpr int kOuterTile = kOuter * Tile<D>::kStride;
  static constexpr int kInnerTile = kInner * Tile<D>::kStride;
  static constexpr size_t kBytes = size_t(2 * kOuterTile + 2 * kInnerTile) * 2 + 2 * kInner * 4;
};

// 1. lse and delta of the queries [q0, q0 + 64) of head `head`.
template <int D>
__global__ void __launch_bounds__(kThreads) stats_kernel(MmaBackwardParams p) {
  extern __shared__ uint4 shared_raw[];
  using S = Shared<D>;
  auto* q_tile = reinterpret_cast<__nv_bfloat16*>(shared_raw);
  __nv_bfloat16* do_tile = q_tile + S::kOuterTile;
  __nv_bfloat16* k_tile = do_tile + S::kOuterTile;
  __nv_bfloat16* v_tile = k_tile + S::kInnerTile;
  // The longest (latest) query tiles first.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kOuter, head = blockIdx.y, kv_head = head / p.group;
  const int warp_row0 = (threadIdx.x / 32) * 16;
  load_tile<D>(p.q, q0, kOuter, p.n, p.heads, head, q_tile);
  load_tile<D>(p.d_out, q0, kOuter, p.n, p.heads, head, do_tile);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, acc[2] = {0.0f, 0.0f};
  const int last_key = min(p.n, q0 + kOuter) - 1;
  for (int k0 = 0; k0 <= last_key; k0 += kInner) {
    __syncthreads();  // the previous tile is used up (and the Q/dO tiles are stored)
    load_tile<D>(p.k, k0, kInner, p.n, p.kv_heads, kv_head, k_tile);
    load_tile<D>(p.v, k0, kInner, p.n, p.kv_heads, kv_head, v_tile);
    __syncthreads();
    float s[kInner / 8][4], dp[kInner / 8][4];
    rows_times_rows<D>(q_tile, warp_row0, k_tile, s);
    rows_times_rows<D>(do_tile, warp_row0, v_tile, dp);
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

// 2. dK and dV of the keys [k0, k0 + 64) of kv head `blockIdx.y`.
template <int D>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(MmaBackwardParams p) {
  extern __shared__ uint4 shared_raw[];
  using S = Shared<D>;
  auto* k_tile = reinterpret_cast<__nv_bfloat16*>(shared_raw);
  __nv_bfloat16* v_tile = k_tile + S::kOuterTile;
  __nv_bfloat16* q_tile = v_tile + S::kOuterTile;
  __nv_bfloat16* do_tile = q_tile + S::kInnerTile;
  auto* lse_s = reinterpret_cast<float*>(do_tile + S::kInnerTile);
  float* delta_s = lse_s + kInner;
  const int k0 = blockIdx.x * kOuter, kv_head = blockIdx.y;  // the longest (earliest) first
  const int warp_row0 = (threadIdx.x / 32) * 16;
  load_tile<D>(p.k, k0, kOuter, p.n, p.kv_heads, kv_head, k_tile);
  load_tile<D>(p.v, k0, kOuter, p.n, p.kv_heads, kv_head, v_tile);
  float dk[D / 8][4] = {}, dv[D / 8][4] = {};
  for (int h = kv_head * p.group; h < (kv_head + 1) * p.group; ++h) {
    for (int q0 = k0 / kInner * kInner; q0 < p.n; q0 += kInner) {
      __syncthreads();  // the previous tile is used up (and the K/V tiles are stored)
      load_tile<D>(p.q, q0, kInner, p.n, p.heads, h, q_tile);
      load_tile<D>(p.d_out, q0, kInner, p.n, p.heads, h, do_tile);
      for (int i = threadIdx.x; i < kInner; i += kThreads) {
        const bool valid = q0 + i < p.n;
        lse_s[i] = valid ? p.lse[int64_t(h) * p.n + q0 + i] : INFINITY;  // P = 0 past n
        delta_s[i] = valid ? p.delta[int64_t(h) * p.n + q0 + i] : 0.0f;
      }
      __syncthreads();
      float st[kInner / 8][4], dpt[kInner / 8][4];
      rows_times_rows<D>(k_tile, warp_row0, q_tile, st);    // S^T = K Q^T
      rows_times_rows<D>(v_tile, warp_row0, do_tile, dpt);  // dP^T = V dO^T
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
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = k0 + warp_row0 + acc_row(2 * r);
    if (key >= p.n) continue;
    const int64_t row = (int64_t(key) * p.kv_heads + kv_head) * D + 2 * (threadIdx.x % 4);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<float2*>(p.dk + row + 8 * j) = make_float2(dk[j][2 * r], dk[j][2 * r + 1]);
      *reinterpret_cast<float2*>(p.dv + row + 8 * j) = make_float2(dv[j][2 * r], dv[j][2 * r + 1]);
    }
  }
}

// 3. dQ of the queries [q0, q0 + 64) of head `blockIdx.y`.
template <int D>
__global__ void __launch_bounds__(kThreads) dq_kernel(MmaBackwardParams p) {
  extern __shared__ uint4 shared_raw[];
  using S = Shared<D>;
  auto* q_tile = reinterpret_cast<__nv_bfloat16*>(shared_raw);
  __nv_bfloat16* do_tile = q_tile + S::kOuterTile;
  __nv_bfloat16* k_tile = do_tile + S::kOuterTile;
  __nv_bfloat16* v_tile = k_tile + S::kInnerTile;
  // The longest (latest) query tiles first.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kOuter, head = blockIdx.y, kv_head = head / p.group;
  const int warp_row0 = (threadIdx.x / 32) * 16;
  load_tile<D>(p.q, q0, kOuter, p.n, p.heads, head, q_tile);
  load_tile<D>(p.d_out, q0, kOuter, p.n, p.heads, head, do_tile);
  float lse[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int query = q0 + warp_row0 + acc_row(2 * r);
    lse[r] = query < p.n ? p.lse[int64_t(head) * p.n + query] : INFINITY;
    delta[r] = query < p.n ? p.delta[int64_t(head) * p.n + query] : 0.0f;
  }
  float dq[D / 8][4] = {};
  const int last_key = min(p.n, q0 + kOuter) - 1;
  for (int k0 = 0; k0 <= last_key; k0 += kInner) {
    __syncthreads();
    load_tile<D>(p.k, k0, kInner, p.n, p.kv_heads, kv_head, k_tile);
    load_tile<D>(p.v, k0, kInner, p.n, p.kv_heads, kv_head, v_tile);
    __syncthreads();
    float s[kInner / 8][4], dp[kInner / 8][4];
    rows_times_rows<D>(q_tile, warp_row0, k_tile, s);
    rows_times_rows<D>(do_tile, warp_row0, v_tile, dp);
#pragma unroll
    for (int j = 0; j < kInner / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int query = q0 + warp_row0 + acc_row(i), key = k0 + acc_col(j, i);
        const float prob = key <= query ? expf(s[j][i] * p.scale - lse[i >> 1]) : 0.0f;
        s[j][i] = prob * (dp[j][i] - delta[i >> 1]) * p.scale;  // dS
      }
    acc_times_rows<D>(s, k_tile, dq);  // dQ += dS K
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
  const unsigned tiles = unsigned((p.n + kOuter - 1) / kOuter);
  stats_kernel<D><<<dim3(tiles, unsigned(p.heads)), kThreads, kBytes, ctx.stream()>>>(p);
  check_launch("attention_backward", "stats_kernel");
  dkdv_kernel<D><<<dim3(tiles, unsigned(p.kv_heads)), kThreads, kBytes, ctx.stream()>>>(p);
  check_launch("attention_backward", "dkdv_kernel");
  dq_kernel<D><<<dim3(tiles, unsigned(p.heads)), kThreads, kBytes, ctx.stream()>>>(p);
  check_launch("attention_backward", "dq_kernel");
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
  Tensor lse = ctx.empty(DType::F32, {heads, n}, op);
  Tensor delta = ctx.empty(DType::F32, {heads, n}, op);
  const MmaBackwardParams p{q.data_as<const float>(),
                            k.data_as<const float>(),
                            v.data_as<const float>(),
                            d_out.data_as<const float>(),
                            dq.data_as<float>(),
                            dk.data_as<float>(),
                            dv.data_as<float>(),
                            lse.data_as<float>(),
                            delta.data_as<float>(),
                            int(n),
                            int(heads),
                            int(kv_heads),
                            int(heads / kv_heads),
                            float(1.0 / std::sqrt(double(head_dim)))};
  if (head_dim == 64) {
    launch<64>(ctx, p);
  } else {
    launch<128>(ctx, p);
  }
}

}  // namespace llamaq::cuda
