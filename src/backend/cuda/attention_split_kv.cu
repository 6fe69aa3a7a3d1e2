// Split-KV causal GQA attention ("flash-decoding") for few queries over many keys: the keys a
// query sees are cut into n_splits ranges, one block per (split, head, query). Inside a block,
// groups of lanes (8, or head_dim/4 when smaller) each take two keys at a time: the group reads
// the key and value rows with 16-byte loads, reduces the dot product with shuffles and keeps its
// own online-softmax state; the block merges its groups in shared memory and writes one partial
// state per split. The last split of each (query, head) to finish merges the partial states into
// the output (arrival counters from the context), else combine_splits_kernel does. The cache is f32
// or bf16 (widened to f32 as it is loaded); everything else is fp32.
#include "backend/cuda/attention_common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 128;

template <int D>
struct SplitLayout {
  static constexpr int kLanes = D / 4 < 8 ? D / 4 : 8;  // lanes per key
  static constexpr int kVecs = D / (4 * kLanes);        // float4s per lane
  static constexpr int kGroups = kThreads / kLanes;     // keys in flight per block
  static_assert(D % (4 * kLanes) == 0 && 32 % kLanes == 0);
};

// The block's keys: split `split` of [0, positions[t] + 1), cut in near-equal ranges.
__device__ int2 split_range(const AttentionParams& p, int t, int split, int n_splits) {
  const int n_keys = p.positions[t] + 1;
  const int chunk = (n_keys + n_splits - 1) / n_splits;
  const int begin = min(n_keys, split * chunk);
  return make_int2(begin, min(n_keys, begin + chunk));
}

__device__ __forceinline__ float dot4(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

__device__ __forceinline__ float4 scale_add(float4 o, float alpha, float w, float4 v) {
  return make_float4(o.x * alpha + w * v.x, o.y * alpha + w * v.y, o.z * alpha + w * v.z,
                     o.w * alpha + w * v.w);
}

// This lane's float4s of the key and value rows of `key`.
template <typename T, int D>
__device__ __forceinline__ void load_kv_row(const AttentionParams& p, int key, int kv_head, int sub,
                                            float4 (&k)[SplitLayout<D>::kVecs],
                                            float4 (&v)[SplitLayout<D>::kVecs]) {
  const int64_t offset = kv_offset(p, key, kv_head);
#pragma unroll
  for (int i = 0; i < SplitLayout<D>::kVecs; ++i) {
    const int64_t at = offset + 4 * (sub + SplitLayout<D>::kLanes * i);
    k[i] = load4(static_cast<const T*>(p.k_blocks) + at);
    v[i] = load4(static_cast<const T*>(p.v_blocks) + at);
  }
}

// Adds one key with `score` and value `v` to the running max m, sum of exps l and output o.
template <int D>
__device__ __forceinline__ void online_update(float score, const float4 (&v)[SplitLayout<D>::kVecs],
                                              float& m, float& l,
                                              float4 (&o)[SplitLayout<D>::kVecs]) {
  const float m_new = fmaxf(m, score);
  const float alpha = exp_diff(m, m_new);
  const float w = expf(score - m_new);
  l = l * alpha + w;
#pragma unroll
  for (int i = 0; i < SplitLayout<D>::kVecs; ++i)
    o[i] = scale_add(o[i], alpha, w, v[i]);
  m = m_new;
}

// Merges the groups' states (m, l, o) in shared memory and writes the split's partial state.
template <int D>
__device__ void write_block_state(const AttentionParams& p, const SplitKvWorkspace& ws,
                                  const float* m_s, const float* l_s, const float* o_s,
                                  int64_t item) {
  constexpr int kGroups = SplitLayout<D>::kGroups;
  float m_max = -INFINITY;
  for (int g = 0; g < kGroups; ++g)
    m_max = fmaxf(m_max, m_s[g]);
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float acc = 0.0f;
    for (int g = 0; g < kGroups; ++g)
      acc += o_s[g * D + d] * exp_diff(m_s[g], m_max);
    ws.partial_out[item * D + d] = acc;
  }
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int g = 0; g < kGroups; ++g)
      sum += l_s[g] * exp_diff(m_s[g], m_max);
    ws.partial_stats[2 * item] = m_max;
    ws.partial_stats[2 * item + 1] = sum;
  }
}

// out = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M) for one (query t, head), by one block: the
// first warp reads every split's (m, l) at once (a lane per split) and leaves each split's weight
// e^(m_s - M) in shared memory; then each thread sums its output elements over the splits, the
// loads unrolled so that they are in flight together (a decode step waits on this). The partial
// states come from other blocks: read from L2.
__device__ void combine_splits(const AttentionParams& p, const SplitKvWorkspace& ws, int t,
                               int head,
                               float* split_weight) {  // shared [n_splits]
  __shared__ float total_s;
  const int64_t first = (int64_t(t) * p.n_heads + head) * ws.n_splits;
  const float* stats = ws.partial_stats + 2 * first;
  if (threadIdx.x < 32) {
    float m_max = -INFINITY;
    for (int s = threadIdx.x; s < ws.n_splits; s += 32)
      m_max = fmaxf(m_max, __ldcg(stats + 2 * s));
    m_max = warp_max(m_max);
    float total = 0.0f;
    for (int s = threadIdx.x; s < ws.n_splits; s += 32) {
      const float w = exp_diff(__ldcg(stats + 2 * s), m_max);
      split_weight[s] = w;
      total += __ldcg(stats + 2 * s + 1) * w;
    }
    total = warp_sum(total);
    if (threadIdx.x == 0) total_s = total;
  }
  __syncthreads();
  float* out = p.out + (int64_t(t) * p.n_heads + head) * p.head_dim;
  const float* partial = ws.partial_out + first * p.head_dim;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float acc = 0.0f;
#pragma unroll 8
    for (int s = 0; s < ws.n_splits; ++s)
      acc += __ldcg(partial + int64_t(s) * p.head_dim + d) * split_weight[s];
    out[d] = acc / total_s;
  }
}

// Block (x = split, y = head, z = query).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    split_kv_attention_kernel(AttentionParams p, SplitKvWorkspace ws) {
  allow_dependents_to_launch();
  p.block_table += int64_t(blockIdx.z) * p.table_stride;  // this query's sequence
  using L = SplitLayout<D>;
  __shared__ float m_s[L::kGroups];
  __shared__ float l_s[L::kGroups];
  __shared__ __align__(16) float o_s[L::kGroups * D];
  const int split = blockIdx.x;
  const int head = blockIdx.y;
  const int t = blockIdx.z;
  const int group = threadIdx.x / L::kLanes;
  const int sub = threadIdx.x % L::kLanes;
  const int kv_head = head / p.group;
  const int2 range = split_range(p, t, split, ws.n_splits);

  float4 q[L::kVecs], o[L::kVecs];
  const float* q_row = p.q + (int64_t(t) * p.n_heads + head) * D;
#pragma unroll
  for (int i = 0; i < L::kVecs; ++i) {
    q[i] = *reinterpret_cast<const float4*>(q_row + 4 * (sub + L::kLanes * i));
    o[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float m = -INFINITY;
  float l = 0.0f;
  // Two keys per group per iteration, both loaded before either is used. The trip count is
  // block-uniform, so every lane reaches every shuffle.
  for (int base = range.x; base < range.y; base += 2 * L::kGroups) {
    const int key0 = base + group;
    const int key1 = key0 + L::kGroups;
    const bool valid0 = key0 < range.y;
    const bool valid1 = key1 < range.y;
    float4 k0[L::kVecs], v0[L::kVecs], k1[L::kVecs], v1[L::kVecs];
    if (valid0) load_kv_row<T, D>(p, key0, kv_head, sub, k0, v0);
    if (valid1) load_kv_row<T, D>(p, key1, kv_head, sub, k1, v1);
    float dot0 = 0.0f;
    float dot1 = 0.0f;
#pragma unroll
    for (int i = 0; i < L::kVecs; ++i) {
      dot0 += valid0 ? dot4(q[i], k0[i]) : 0.0f;
      dot1 += valid1 ? dot4(q[i], k1[i]) : 0.0f;
    }
#pragma unroll
    for (int offset = L::kLanes / 2; offset > 0; offset >>= 1) {
      dot0 += __shfl_xor_sync(kFullMask, dot0, offset);
      dot1 += __shfl_xor_sync(kFullMask, dot1, offset);
    }
    if (valid0) online_update<D>(dot0 * p.scale, v0, m, l, o);
    if (valid1) online_update<D>(dot1 * p.scale, v1, m, l, o);
  }
#pragma unroll
  for (int i = 0; i < L::kVecs; ++i) {
    *reinterpret_cast<float4*>(o_s + group * D + 4 * (sub + L::kLanes * i)) = o[i];
  }
  if (sub == 0) {
    m_s[group] = m;
    l_s[group] = l;
  }
  __syncthreads();
  const int64_t item = (int64_t(t) * p.n_heads + head) * ws.n_splits + split;
  write_block_state<D>(p, ws, m_s, l_s, o_s, item);
  if (ws.arrivals == nullptr) return;
  // The last split of (t, head) to finish merges them all and resets the counter.
  __shared__ bool is_last;
  __shared__ float split_weight[kSplitKvMaxSplits];
  unsigned* arrivals = ws.arrivals + int64_t(t) * p.n_heads + head;
  __threadfence();  // this split's state is visible before its arrival counts
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(arrivals, 1u) == unsigned(ws.n_splits) - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  combine_splits(p, ws, t, head, split_weight);
  if (threadIdx.x == 0) *arrivals = 0u;
}

// Block (x = head, y = query): the merge when there are no arrival counters.
__global__ void combine_splits_kernel(AttentionParams p, SplitKvWorkspace ws) {
  allow_dependents_to_launch();
  extern __shared__ float split_weight[];  // [n_splits]
  combine_splits(p, ws, int(blockIdx.y), int(blockIdx.x), split_weight);
}

template <int D>
void launch_split_kv(const AttentionParams& p, const SplitKvWorkspace& ws, cudaStream_t stream) {
  const dim3 grid(unsigned(ws.n_splits), unsigned(p.n_heads), unsigned(p.n_tokens));
  if (p.kv_element == KvElement::Bf16) {
    split_kv_attention_kernel<__nv_bfloat16, D><<<grid, kThreads, 0, stream>>>(p, ws);
  } else {
    split_kv_attention_kernel<float, D><<<grid, kThreads, 0, stream>>>(p, ws);
  }
  check_launch("attention", "split_kv_attention_kernel");
}

}  // namespace

void launch_attention_split_kv(const AttentionParams& p, const SplitKvWorkspace& ws,
                               cudaStream_t stream) {
  switch (p.head_dim) {
    case 16:
      launch_split_kv<16>(p, ws, stream);
      break;
    case 32:
      launch_split_kv<32>(p, ws, stream);
      break;
    case 64:
      launch_split_kv<64>(p, ws, stream);
      break;
    case 128:
      launch_split_kv<128>(p, ws, stream);
      break;
    default:
      fail_op("attention", "no split-KV kernel for head_dim " + std::to_string(p.head_dim));
  }
  if (ws.arrivals != nullptr) return;  // merged by each (query, head)'s last split
  const dim3 grid(unsigned(p.n_heads), unsigned(p.n_tokens));
  combine_splits_kernel<<<grid, 128, size_t(ws.n_splits) * sizeof(float), stream>>>(p, ws);
  check_launch("attention", "combine_splits_kernel");
}

}  // namespace llamaq::cuda
