// Plain attention with materialized scores (`--attn naive`), for comparison with the flash kernel
// and as a second implementation in the tests, done the way an eager implementation does it:
//   1. gather K and V of every kv head from the paged cache into contiguous bf16 matrices
//      (keys past the last query position are zeros) and round Q to bf16;
//   2. S = scale * Q K^T per query head with cuBLAS (bf16 in, fp32 scores [heads, n, keys]);
//   3. a separate causal softmax kernel turns each score row into bf16 probabilities P;
//   4. O = P V per query head with cuBLAS (fp32 out, written into the [n, heads * head_dim]
//   output).
// The keys span the sequence's whole block table (its capacity), masked past each query's
// position, as a static-cache eager implementation does: the host never needs the positions.
// Memory: 6 bytes per (head, query, key) on top of the gathered K/V, quadratic in the length.
#include <cublas_v2.h>

#include "backend/cuda/attention_common.cuh"
#include "backend/cuda/attention_naive.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr const char* kOp = "attention";

// n_keys[0] = 1 + the largest query position (the keys any query can see).
__global__ void max_position_kernel(const int32_t* positions, int n, int* n_keys) {
  int best = -1;
  for (int i = threadIdx.x; i < n; i += kThreads)
    best = max(best, positions[i]);
  __shared__ int partial[kThreads];
  partial[threadIdx.x] = best;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride)
      partial[threadIdx.x] = max(partial[threadIdx.x], partial[threadIdx.x + stride]);
    __syncthreads();
  }
  if (threadIdx.x == 0) n_keys[0] = partial[0] + 1;
}

// k_out/v_out [n_kv_heads, capacity, head_dim] bf16 from the paged cache; zeros at and past
// n_keys. Block (x = key, y = kv head).
template <typename T>
__global__ void gather_kv_kernel(AttentionParams p, const int* n_keys, __nv_bfloat16* k_out,
                                 __nv_bfloat16* v_out, int capacity) {
  const int key = blockIdx.x;
  const int kv_head = blockIdx.y;
  const bool valid = key < n_keys[0];
  const int64_t dst = (int64_t(kv_head) * capacity + key) * p.head_dim;
  const int64_t src = valid ? kv_offset(p, key, kv_head) : 0;
  const T* k_cache = static_cast<const T*>(p.k_blocks);
  const T* v_cache = static_cast<const T*>(p.v_blocks);
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    k_out[dst + d] = __float2bfloat16_rn(valid ? to_float(k_cache[src + d]) : 0.0f);
    v_out[dst + d] = __float2bfloat16_rn(valid ? to_float(v_cache[src + d]) : 0.0f);
  }
}

__global__ void round_to_bf16_kernel(const float* in, __nv_bfloat16* out, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * kThreads)
    out[i] = __float2bfloat16_rn(in[i]);
}

__device__ float block_reduce(float v, bool is_max, float* scratch) {
  v = is_max ? warp_max(v) : warp_sum(v);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w)
    r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
  __syncthreads();  // scratch is reused by the next reduction
  return r;
}

// One block per score row (x = query, y = head): P[key] = softmax over keys <= position.
__global__ void causal_softmax_kernel(const float* scores, __nv_bfloat16* probs,
                                      const int32_t* positions, int n, int capacity) {
  __shared__ float scratch[kThreads / 32];
  const int64_t row = int64_t(blockIdx.y) * n + blockIdx.x;
  const float* s = scores + row * capacity;
  __nv_bfloat16* out = probs + row * capacity;
  const int visible = min(positions[blockIdx.x] + 1, capacity);
  float m = -INFINITY;
  for (int k = threadIdx.x; k < visible; k += kThreads)
    m = fmaxf(m, s[k]);
  m = block_reduce(m, true, scratch);
  float sum = 0.0f;
  for (int k = threadIdx.x; k < visible; k += kThreads)
    sum += expf(s[k] - m);
  const float inv = 1.0f / block_reduce(sum, false, scratch);
  for (int k = threadIdx.x; k < capacity; k += kThreads)
    out[k] = __float2bfloat16_rn(k < visible ? expf(s[k] - m) * inv : 0.0f);
}

}  // namespace

void attention_naive(CudaContext& ctx, const AttentionParams& p, int capacity) {
  cudaStream_t stream = ctx.stream();
  const int n = p.n_tokens;
  const int heads = p.n_heads;
  const int d = p.head_dim;
  const int64_t scores = int64_t(heads) * n * capacity;
  Tensor n_keys = ctx.empty(DType::I32, {1}, kOp);
  Tensor keys = ctx.empty(DType::BF16, {p.n_kv_heads, capacity, d}, kOp);
  Tensor values = ctx.empty(DType::BF16, {p.n_kv_heads, capacity, d}, kOp);
  Tensor q16 = ctx.empty(DType::BF16, {n, heads, d}, kOp);
  Tensor s = ctx.empty(DType::F32, {scores}, kOp);
  Tensor probs = ctx.empty(DType::BF16, {scores}, kOp);

  max_position_kernel<<<1, kThreads, 0, stream>>>(p.positions, n, n_keys.data_as<int>());
  const dim3 gather_grid(unsigned(capacity), unsigned(p.n_kv_heads));
  if (p.kv_element == KvElement::Bf16) {
    gather_kv_kernel<__nv_bfloat16>
        <<<gather_grid, 128, 0, stream>>>(p, n_keys.data_as<int>(), keys.data_as<__nv_bfloat16>(),
                                          values.data_as<__nv_bfloat16>(), capacity);
  } else {
    gather_kv_kernel<float>
        <<<gather_grid, 128, 0, stream>>>(p, n_keys.data_as<int>(), keys.data_as<__nv_bfloat16>(),
                                          values.data_as<__nv_bfloat16>(), capacity);
  }
  round_to_bf16_kernel<<<grid_size(q16.numel(), kThreads), kThreads, 0, stream>>>(
      p.q, q16.data_as<__nv_bfloat16>(), q16.numel());
  check_launch(kOp, "naive attention gather");

  // Column-major view: S_h^T [capacity, n] = K_c [capacity, d] Q_h^T [d, n], one batch entry per
  // query head of a kv head (K shared: stride 0).
  const float zero = 0.0f;
  const float one = 1.0f;
  const long long kv_stride = (long long)capacity * d;
  for (int kvh = 0; kvh < p.n_kv_heads; ++kvh) {
    const int h0 = kvh * p.group;
    check_cublas(cublasGemmStridedBatchedEx(
                     ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, capacity, n, d, &p.scale,
                     keys.data_as<__nv_bfloat16>() + kvh * kv_stride, CUDA_R_16BF, d, 0,
                     q16.data_as<__nv_bfloat16>() + int64_t(h0) * d, CUDA_R_16BF, heads * d, d,
                     &zero, s.data_as<float>() + int64_t(h0) * n * capacity, CUDA_R_32F, capacity,
                     (long long)n * capacity, p.group, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 kOp, "cublasGemmStridedBatchedEx(QK^T)");
  }
  causal_softmax_kernel<<<dim3(unsigned(n), unsigned(heads)), kThreads, 0, stream>>>(
      s.data_as<float>(), probs.data_as<__nv_bfloat16>(), p.positions, n, capacity);
  check_launch(kOp, "causal_softmax_kernel");
  // O_h^T [d, n] = V_c^T [d, capacity] P_h^T [capacity, n], written at column h * d of out.
  for (int kvh = 0; kvh < p.n_kv_heads; ++kvh) {
    const int h0 = kvh * p.group;
    check_cublas(cublasGemmStridedBatchedEx(
                     ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, d, n, capacity, &one,
                     values.data_as<__nv_bfloat16>() + kvh * kv_stride, CUDA_R_16BF, d, 0,
                     probs.data_as<__nv_bfloat16>() + int64_t(h0) * n * capacity, CUDA_R_16BF,
                     capacity, (long long)n * capacity, &zero, p.out + int64_t(h0) * d, CUDA_R_32F,
                     heads * d, d, p.group, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 kOp, "cublasGemmStridedBatchedEx(PV)");
  }
}

}  // namespace llamaq::cuda
