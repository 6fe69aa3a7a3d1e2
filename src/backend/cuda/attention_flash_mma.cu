// FlashAttention-2 forward on the tensor cores for prefill: causal GQA attention over the paged KV
// cache, bf16 mma.sync with fp32 accumulation and an fp32 online softmax.
//
// A block of 4 warps owns 64 consecutive queries of one head, each warp 16 of them (its Q tile
// stays in registers as bf16 A fragments). Keys and values stream through shared memory in tiles
// of 64, gathered through the block table and double-buffered: bf16 caches are copied with
// cp.async while the previous tile is computed, f32 caches are rounded to bf16 on the way. Per
// tile a warp computes S = Q K^T (16 x 64, K fragments by ldmatrix), masks it (only tiles that
// reach past the block's first query position need a mask), updates the running max and sum per
// row and accumulates O += P V with P taken straight from the S accumulators (V fragments by
// ldmatrix.trans). Tiles past the block's last query position are never loaded (causal skip);
// blocks run longest (latest queries) first. K/V of a kv head are read by its `group` query heads
// through L2, never repeated in memory.
//
// Per tile and block: 4 * 64 * 64 * D flops in 2 * 64 * D mma inputs; shared memory 2 stages x
// (K, V) x 64 x (D + 8) bf16 = 70 KB for D = 128, so three blocks fit on an SM.
#include <climits>

#include "backend/cuda/attention_common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernel_attributes.h"
#include "backend/cuda/mma_bf16.cuh"

namespace llamaq::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockQ = kWarps * 16;  // queries per block
constexpr int kBlockK = 64;           // keys per tile
constexpr float kLog2e = 1.4426950408889634f;

template <int D>
struct MmaLayout {
  static constexpr int kStride = D + 8;  // bf16 per shared row: 16-byte rows on distinct banks
  static constexpr int kTile = kBlockK * kStride;
  static constexpr size_t kBytes = size_t(2 * 2 * kTile) * sizeof(__nv_bfloat16);
};

// 8 cache elements (one 16-byte bf16 chunk in shared memory) of a key or value row.
__device__ __forceinline__ void copy_chunk(__nv_bfloat16* dst, const __nv_bfloat16* src) {
  cp_async_16(dst, src);
}

__device__ __forceinline__ void copy_chunk(__nv_bfloat16* dst, const float* src) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(src));
  const float4 b = __ldg(reinterpret_cast<const float4*>(src) + 1);
  *reinterpret_cast<uint4*>(dst) = make_uint4(pack_bf16x2(a.x, a.y), pack_bf16x2(a.z, a.w),
                                              pack_bf16x2(b.x, b.y), pack_bf16x2(b.z, b.w));
}

// Keys/values k0 .. k0 + 63 of one kv head into a stage (zeros past n_keys).
template <typename T, int D>
__device__ void load_kv_tile(const AttentionParams& p, int k0, int n_keys, int kv_head,
                             __nv_bfloat16* k_tile, __nv_bfloat16* v_tile) {
  constexpr int kChunks = D / 8;
  const T* k_cache = static_cast<const T*>(p.k_blocks);
  const T* v_cache = static_cast<const T*>(p.v_blocks);
  for (int e = threadIdx.x; e < kBlockK * kChunks; e += kThreads) {
    const int key = e / kChunks;
    const int c = e % kChunks;
    __nv_bfloat16* k_dst = k_tile + key * MmaLayout<D>::kStride + 8 * c;
    __nv_bfloat16* v_dst = v_tile + key * MmaLayout<D>::kStride + 8 * c;
    if (k0 + key < n_keys) {
      const int64_t offset = kv_offset(p, k0 + key, kv_head) + 8 * c;
      copy_chunk(k_dst, k_cache + offset);
      copy_chunk(v_dst, v_cache + offset);
    } else {
      *reinterpret_cast<uint4*>(k_dst) = make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint4*>(v_dst) = make_uint4(0, 0, 0, 0);
    }
  }
  cp_async_commit();
}

// The warp's 16 query rows as A fragments (bf16), zeros past n_tokens.
template <int D>
__device__ void load_q_fragments(const AttentionParams& p, int q0, int head,
                                 uint32_t (&qf)[D / 16][4]) {
  const int lane = threadIdx.x % 32;
  const int row = q0 + (threadIdx.x / 32) * 16 + lane / 4;
  const int col = 2 * (lane % 4);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = row + 8 * half;
    const float* q = p.q + (int64_t(t) * p.n_heads + head) * D + col;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      float2 lo = make_float2(0.f, 0.f);
      float2 hi = lo;
      if (t < p.n_tokens) {
        lo = *reinterpret_cast<const float2*>(q + 16 * kk);
        hi = *reinterpret_cast<const float2*>(q + 16 * kk + 8);
      }
      qf[kk][half] = pack_bf16x2(lo.x, lo.y);
      qf[kk][2 + half] = pack_bf16x2(hi.x, hi.y);
    }
  }
}

// s = Q K^T for the warp's 16 rows and the tile's 64 keys (n-tile j = keys 8j .. 8j + 7).
template <int D>
__device__ __forceinline__ void score_tile(const uint32_t (&qf)[D / 16][4],
                                           const __nv_bfloat16* k_tile,
                                           float (&s)[kBlockK / 8][4]) {
  const int lane = threadIdx.x % 32;
  const int m = lane / 8;  // the ldmatrix matrix this lane addresses
#pragma unroll
  for (int j = 0; j < kBlockK / 8; ++j)
    s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int jp = 0; jp < kBlockK / 16; ++jp) {
      // Matrices: keys 16jp + 8(m / 2) + 0..7, dims 16kk + 8(m % 2) + 0..7.
      const int key = 16 * jp + 8 * (m >> 1) + lane % 8;
      uint32_t kb[4];
      ldmatrix_x4(kb, k_tile + key * MmaLayout<D>::kStride + 16 * kk + 8 * (m & 1));
      const uint32_t b0[2] = {kb[0], kb[1]};
      const uint32_t b1[2] = {kb[2], kb[3]};
      mma_bf16_16816(s[2 * jp], qf[kk], b0);
      mma_bf16_16816(s[2 * jp + 1], qf[kk], b1);
    }
  }
}

// o += P V, P (16 x 64) from the probabilities in the S accumulator layout.
template <int D>
__device__ __forceinline__ void accumulate_values(const float (&s)[kBlockK / 8][4],
                                                  const __nv_bfloat16* v_tile,
                                                  float (&o)[D / 8][4]) {
  const int lane = threadIdx.x % 32;
  const int m = lane / 8;
#pragma unroll
  for (int kk = 0; kk < kBlockK / 16; ++kk) {
    const uint32_t a[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]),
                           pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                           pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                           pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
    // Matrices: keys 16kk + 8(m % 2) + 0..7, dims 16dp + 8(m / 2) + 0..7, transposed.
    const int key = 16 * kk + 8 * (m & 1) + lane % 8;
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, v_tile + key * MmaLayout<D>::kStride + 16 * dp + 8 * (m >> 1));
      const uint32_t b0[2] = {vb[0], vb[1]};
      const uint32_t b1[2] = {vb[2], vb[3]};
      mma_bf16_16816(o[2 * dp], a, b0);
      mma_bf16_16816(o[2 * dp + 1], a, b1);
    }
  }
}

// Row state of the online softmax for the lane's two rows (g and g + 8), in the log2 domain.
struct RowState {
  float max[2];
  float sum[2];  // this lane's share of the row's sum
};

// Scales and masks s, turns it into probabilities against the new running max, and rescales the
// running sum and o. `mask` is false for tiles every row of the block sees entirely.
template <int D>
__device__ __forceinline__ void online_softmax(float (&s)[kBlockK / 8][4], float (&o)[D / 8][4],
                                               RowState& st, const int (&pos)[2], int k0,
                                               float scale_log2, bool mask) {
  const int t = threadIdx.x % 4;
  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int j = 0; j < kBlockK / 8; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int key = k0 + 8 * j + 2 * t + (i & 1);
      float v = s[j][i] * scale_log2;
      if (mask && key > pos[i >> 1]) v = -INFINITY;
      s[j][i] = v;
      tile_max[i >> 1] = fmaxf(tile_max[i >> 1], v);
    }
  }
  float alpha[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
    const float new_max = fmaxf(st.max[r], tile_max[r]);
    // A row that has seen no visible key yet keeps max -inf: nothing to rescale, p = 0.
    alpha[r] = new_max == -INFINITY ? 1.0f : exp2f(st.max[r] - new_max);
    st.max[r] = new_max;
    st.sum[r] *= alpha[r];
  }
#pragma unroll
  for (int j = 0; j < kBlockK / 8; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = i >> 1;
      const float prob = st.max[r] == -INFINITY ? 0.0f : exp2f(s[j][i] - st.max[r]);
      s[j][i] = prob;
      st.sum[r] += prob;
    }
  }
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    o[j][0] *= alpha[0];
    o[j][1] *= alpha[0];
    o[j][2] *= alpha[1];
    o[j][3] *= alpha[1];
  }
}

template <int D>
__device__ __forceinline__ void store_output(const AttentionParams& p, int q0, int head,
                                             const float (&o)[D / 8][4], RowState& st) {
  const int lane = threadIdx.x % 32;
  const int row = q0 + (threadIdx.x / 32) * 16 + lane / 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = st.sum[r];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const int t = row + 8 * r;
    if (t >= p.n_tokens) continue;
    const float inv = 1.0f / total;  // every valid row sees key 0 at least
    float* out = p.out + (int64_t(t) * p.n_heads + head) * D + 2 * (lane % 4);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<float2*>(out + 8 * j) =
          make_float2(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) flash_mma_kernel(AttentionParams p) {
  using L = MmaLayout<D>;
  extern __shared__ uint4 shared_raw[];
  __nv_bfloat16* stages = reinterpret_cast<__nv_bfloat16*>(shared_raw);  // [2][K, V][64][stride]
  __shared__ int q_pos[kBlockQ];
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kBlockQ;  // longest (latest) tiles first
  const int head = blockIdx.y;
  const int kv_head = head / p.group;
  const int lane = threadIdx.x % 32;

  for (int r = threadIdx.x; r < kBlockQ; r += kThreads)
    q_pos[r] = q0 + r < p.n_tokens ? p.positions[q0 + r] : -1;
  __syncthreads();
  int max_pos = -1;
  int min_pos = INT_MAX;
  for (int r = 0; r < kBlockQ; ++r) {
    const int v = q_pos[r];
    max_pos = max(max_pos, v);
    if (v >= 0) min_pos = min(min_pos, v);
  }
  const int row = (threadIdx.x / 32) * 16 + lane / 4;
  const int pos[2] = {q_pos[row], q_pos[row + 8]};
  const int n_keys = max_pos + 1;
  const int n_tiles = (n_keys + kBlockK - 1) / kBlockK;

  uint32_t qf[D / 16][4];
  load_q_fragments<D>(p, q0, head, qf);
  float o[D / 8][4] = {};
  RowState st{{-INFINITY, -INFINITY}, {0.0f, 0.0f}};
  const float scale_log2 = p.scale * kLog2e;

  if (n_tiles > 0) load_kv_tile<T, D>(p, 0, n_keys, kv_head, stages, stages + L::kTile);
  for (int tile = 0; tile < n_tiles; ++tile) {
    __nv_bfloat16* k_tile = stages + (tile & 1) * 2 * L::kTile;
    if (tile + 1 < n_tiles) {
      __nv_bfloat16* next = stages + ((tile + 1) & 1) * 2 * L::kTile;
      load_kv_tile<T, D>(p, (tile + 1) * kBlockK, n_keys, kv_head, next, next + L::kTile);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int k0 = tile * kBlockK;
    float s[kBlockK / 8][4];
    score_tile<D>(qf, k_tile, s);
    online_softmax<D>(s, o, st, pos, k0, scale_log2, k0 + kBlockK - 1 > min_pos);
    accumulate_values<D>(s, k_tile + L::kTile, o);
    __syncthreads();  // the next iteration's load overwrites this stage
  }
  store_output<D>(p, q0, head, o, st);
}

template <typename T, int D>
void launch(const AttentionParams& p, cudaStream_t stream) {
  constexpr size_t kShared = MmaLayout<D>::kBytes;
  allow_dynamic_shared_memory<flash_mma_kernel<T, D>>(int(kShared), "attention",
                                                      "cudaFuncSetAttribute(flash_mma_kernel)");
  const dim3 grid(unsigned((p.n_tokens + kBlockQ - 1) / kBlockQ), unsigned(p.n_heads));
  flash_mma_kernel<T, D><<<grid, kThreads, kShared, stream>>>(p);
  check_launch("attention", "flash_mma_kernel");
}

template <typename T>
void launch_for_element(const AttentionParams& p, cudaStream_t stream) {
  if (p.head_dim == 64) {
    launch<T, 64>(p, stream);
  } else {
    launch<T, 128>(p, stream);
  }
}

}  // namespace

bool attention_flash_mma_supported(int head_dim) {
  return head_dim == 64 || head_dim == 128;
}

void launch_attention_flash_mma(const AttentionParams& p, cudaStream_t stream) {
  if (!attention_flash_mma_supported(p.head_dim)) {
    fail_op("attention", "no tensor-core flash kernel for head_dim " + std::to_string(p.head_dim));
  }
  if (p.kv_element == KvElement::Bf16) {
    launch_for_element<__nv_bfloat16>(p, stream);
  } else {
    launch_for_element<float>(p, stream);
  }
}

}  // namespace llamaq::cuda
