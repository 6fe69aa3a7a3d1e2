// FlashAttention-2 style causal GQA attention for prefill (many queries), fp32 on CUDA cores.
// A block of 4 warps owns 32 consecutive queries of one head; each warp owns 8 of them. Keys
// and values stream through shared memory in tiles of 32 (gathered from the paged cache); a lane
// scores one key of the tile against the warp's 8 queries, the warp keeps a running max and sum
// per query (online softmax) and each lane accumulates head_dim/32 output dims per query. The
// S x S score matrix never exists; keys past the tile's last visible position are not loaded. The
// cache is f32 or bf16 (widened to f32 as the tile is loaded).
#include "backend/cuda/attention_common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"

namespace llamaq::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 8;
constexpr int kBlockQ = kWarps * kRowsPerWarp;  // queries per block
constexpr int kBlockK = 32;                     // keys per tile: one per lane

template <int D>
struct FlashLayout {
  static constexpr int kKStride = D + 4;  // padded K rows: lanes' float4 reads hit distinct banks
  static constexpr int kDimsPerLane = (D + 31) / 32;
  static constexpr int kQ = 0;                         // [kBlockQ][D]
  static constexpr int kK = kQ + kBlockQ * D;          // [kBlockK][kKStride]
  static constexpr int kV = kK + kBlockK * kKStride;   // [kBlockK][D]
  static constexpr int kP = kV + kBlockK * D;          // [kBlockQ][kBlockK] probabilities
  static constexpr int kPos = kP + kBlockQ * kBlockK;  // [kBlockQ] i32 positions
  static constexpr size_t kBytes = size_t(kPos + kBlockQ) * sizeof(float);
};

// Loads the block's queries (zeros past n_tokens) and their positions (-1 past n_tokens).
template <int D>
__device__ void load_queries(const AttentionParams& p, int q0, int head, float* q_tile,
                             int* q_pos) {
  for (int r = threadIdx.x; r < kBlockQ; r += kThreads) {
    q_pos[r] = q0 + r < p.n_tokens ? p.positions[q0 + r] : -1;
  }
  for (int e = threadIdx.x; e < kBlockQ * D / 4; e += kThreads) {
    const int r = e / (D / 4);
    const int c = e % (D / 4);
    const int t = q0 + r;
    float4 value = make_float4(0.f, 0.f, 0.f, 0.f);
    if (t < p.n_tokens) {
      value = *reinterpret_cast<const float4*>(p.q + (int64_t(t) * p.n_heads + head) * D + 4 * c);
    }
    *reinterpret_cast<float4*>(q_tile + r * D + 4 * c) = value;
  }
}

// Gathers keys/values k0..k0+31 of one kv head into shared memory (zeros past n_keys).
template <typename T, int D>
__device__ void load_kv_tile(const AttentionParams& p, int k0, int n_keys, int kv_head,
                             float* k_tile, float* v_tile) {
  for (int e = threadIdx.x; e < kBlockK * D / 4; e += kThreads) {
    const int key = e / (D / 4);
    const int c = e % (D / 4);
    float4 k = make_float4(0.f, 0.f, 0.f, 0.f);
    float4 v = k;
    if (k0 + key < n_keys) {
      const int64_t offset = kv_offset(p, k0 + key, kv_head) + 4 * c;
      k = load4(static_cast<const T*>(p.k_blocks) + offset);
      v = load4(static_cast<const T*>(p.v_blocks) + offset);
    }
    *reinterpret_cast<float4*>(k_tile + key * FlashLayout<D>::kKStride + 4 * c) = k;
    *reinterpret_cast<float4*>(v_tile + key * D + 4 * c) = v;
  }
}

// Scores of this lane's key against the warp's queries: s[r] = q_r . k_lane.
template <int D>
__device__ void score_tile(const float* q_rows, const float* k_tile, float (&s)[kRowsPerWarp]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
    s[r] = 0.0f;
#pragma unroll 4
  for (int d = 0; d < D; d += 4) {
    const float4 k = *reinterpret_cast<const float4*>(k_tile + lane * FlashLayout<D>::kKStride + d);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float4 q = *reinterpret_cast<const float4*>(q_rows + r * D + d);
      s[r] += q.x * k.x + q.y * k.y + q.z * k.z + q.w * k.w;
    }
  }
}

// o[r][i] += sum over the tile's keys of p[r][key] * v[key][lane + 32 i].
template <int D>
__device__ void accumulate_values(const float* p_rows, const float* v_tile,
                                  float (&o)[kRowsPerWarp][FlashLayout<D>::kDimsPerLane]) {
  constexpr int kDims = FlashLayout<D>::kDimsPerLane;
  const int lane = threadIdx.x % 32;
#pragma unroll 2
  for (int key = 0; key < kBlockK; key += 4) {
    float v[4][kDims];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int i = 0; i < kDims; ++i) {
        const int d = lane + 32 * i;
        v[j][i] = (D % 32 == 0 || d < D) ? v_tile[(key + j) * D + d] : 0.0f;
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float4 w = *reinterpret_cast<const float4*>(p_rows + r * kBlockK + key);
#pragma unroll
      for (int i = 0; i < kDims; ++i) {
        o[r][i] += w.x * v[0][i] + w.y * v[1][i] + w.z * v[2][i] + w.w * v[3][i];
      }
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) flash_attention_kernel(AttentionParams p) {
  using L = FlashLayout<D>;
  extern __shared__ float4 shared4[];
  float* shared = reinterpret_cast<float*>(shared4);
  int* q_pos = reinterpret_cast<int*>(shared + L::kPos);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kBlockQ;  // longest (latest) tiles first
  const int head = blockIdx.y;
  const int kv_head = head / p.group;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;

  load_queries<D>(p, q0, head, shared + L::kQ, q_pos);
  __syncthreads();
  int max_pos = -1;
  int my_pos[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
    my_pos[r] = q_pos[warp * kRowsPerWarp + r];
  for (int r = 0; r < kBlockQ; ++r)
    max_pos = max(max_pos, q_pos[r]);
  const int n_keys = max_pos + 1;

  float m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][L::kDimsPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;  // this lane's share of the row's sum of exps
#pragma unroll
    for (int i = 0; i < L::kDimsPerLane; ++i)
      o[r][i] = 0.0f;
  }
  const float* q_rows = shared + L::kQ + warp * kRowsPerWarp * D;
  float* p_rows = shared + L::kP + warp * kRowsPerWarp * kBlockK;
  for (int k0 = 0; k0 < n_keys; k0 += kBlockK) {
    load_kv_tile<T, D>(p, k0, n_keys, kv_head, shared + L::kK, shared + L::kV);
    __syncthreads();
    float s[kRowsPerWarp];
    score_tile<D>(q_rows, shared + L::kK, s);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float score = k0 + lane <= my_pos[r] ? s[r] * p.scale : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(score));
      float alpha = 1.0f;
      float prob = 0.0f;
      if (m_new != -INFINITY) {  // the row has seen a visible key
        alpha = exp_diff(m[r], m_new);
        prob = exp_diff(score, m_new);
      }
      m[r] = m_new;
      l[r] = l[r] * alpha + prob;
#pragma unroll
      for (int i = 0; i < L::kDimsPerLane; ++i)
        o[r][i] *= alpha;
      p_rows[r * kBlockK + lane] = prob;
    }
    __syncwarp();
    accumulate_values<D>(p_rows, shared + L::kV, o);
    __syncthreads();  // the next tile overwrites K, V and the probabilities
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const float total = warp_sum(l[r]);
    const int t = q0 + warp * kRowsPerWarp + r;
    if (t >= p.n_tokens) continue;
    float* out = p.out + (int64_t(t) * p.n_heads + head) * D;
#pragma unroll
    for (int i = 0; i < L::kDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      if (D % 32 == 0 || d < D) out[d] = o[r][i] / total;
    }
  }
}

template <typename T, int D>
void launch_flash_on(const AttentionParams& p, cudaStream_t stream) {
  constexpr size_t kShared = FlashLayout<D>::kBytes;
  // Over 48 KB for head_dim 128: the dynamic limit must be raised (per device, so every time).
  check_cuda(cudaFuncSetAttribute(flash_attention_kernel<T, D>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, int(kShared)),
             "attention", "cudaFuncSetAttribute(flash_attention_kernel)");
  const dim3 grid(unsigned((p.n_tokens + kBlockQ - 1) / kBlockQ), unsigned(p.n_heads));
  flash_attention_kernel<T, D><<<grid, kThreads, kShared, stream>>>(p);
  check_launch("attention", "flash_attention_kernel");
}

template <int D>
void launch_flash(const AttentionParams& p, cudaStream_t stream) {
  if (p.kv_element == KvElement::Bf16) {
    launch_flash_on<__nv_bfloat16, D>(p, stream);
  } else {
    launch_flash_on<float, D>(p, stream);
  }
}

}  // namespace

void launch_attention_flash(const AttentionParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 16:
      return launch_flash<16>(p, stream);
    case 32:
      return launch_flash<32>(p, stream);
    case 64:
      return launch_flash<64>(p, stream);
    case 128:
      return launch_flash<128>(p, stream);
    default:
      fail_op("attention", "no flash kernel for head_dim " + std::to_string(p.head_dim));
  }
}

}  // namespace llamaq::cuda
