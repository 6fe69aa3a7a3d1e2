// Causal GQA attention backward with materialized probabilities (`--attn naive`), the way an eager
// implementation does it, for comparison with the FlashAttention-2 backward
// (backward_attention.cu) and as a second implementation in the tests. For each kv head, its
// query heads are one batch of cuBLAS fp32 GEMMs (the handle's default math: no TF32):
//   1. S = scale * Q K^T                  [group, n, n]
//   2. P = causal softmax of S's rows     (in place; zeros above the diagonal)
//   3. dP = dO V^T                        [group, n, n]
//   4. dS = P (dP - delta) * scale        (in place; delta = sum_j P dP of the row, as the CPU)
//   5. dV += P^T dO, dK += dS^T Q         (a GEMM per query head, summed over the group)
//   6. dQ = dS K
// The softmax and delta follow the CPU reference's arithmetic (sums of exps and of P dP in
// double), and masked entries are exact zeros, so the GEMMs over whole rows add nothing for
// them. Memory: 8 bytes per (query head of one group, query, key), quadratic in the length.
#include <cublas_v2.h>

#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr const char* kOp = "attention_backward";

// The sum of `value` over the block, in every thread.
__device__ double block_sum(double value) {
  __shared__ double partial[kThreads / 32];
  value = warp_sum(value);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = value;
  __syncthreads();
  double total = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w)
    total += partial[w];
  __syncthreads();  // partial may be reused
  return total;
}

__device__ float block_max(float value) {
  __shared__ float partial[kThreads / 32];
  value = warp_max(value);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = value;
  __syncthreads();
  float best = -INFINITY;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w)
    best = fmaxf(best, partial[w]);
  __syncthreads();
  return best;
}

// Row (x = query i, y = batch entry) of S [batch, n, n] into P: keys 0..i get
// float(exp(s - max) / sum) with the sum in double; keys past i get 0.
__global__ void causal_softmax_kernel(float* s, int n) {
  const int i = blockIdx.x;
  float* row = s + (int64_t(blockIdx.y) * n + i) * n;
  float best = -INFINITY;
  for (int j = threadIdx.x; j <= i; j += kThreads)
    best = fmaxf(best, row[j]);
  best = block_max(best);
  double sum = 0;
  for (int j = threadIdx.x; j <= i; j += kThreads) {
    const float e = expf(row[j] - best);
    row[j] = e;
    sum += e;
  }
  sum = block_sum(sum);
  for (int j = threadIdx.x; j < n; j += kThreads)
    row[j] = j <= i ? float(double(row[j]) / sum) : 0.0f;
}

// Row (x = query i, y = batch entry): dP [batch, n, n] becomes dS = P (dP - delta) * scale, with
// delta = sum_j P_ij dP_ij in double; zeros past the diagonal.
__global__ void score_gradient_kernel(const float* p, float* dp, int n, float scale) {
  const int i = blockIdx.x;
  const int64_t offset = (int64_t(blockIdx.y) * n + i) * n;
  const float* p_row = p + offset;
  float* dp_row = dp + offset;
  double delta = 0;
  for (int j = threadIdx.x; j <= i; j += kThreads)
    delta += double(p_row[j]) * dp_row[j];
  const float delta_f = float(block_sum(delta));
  for (int j = threadIdx.x; j < n; j += kThreads)
    dp_row[j] = j <= i ? p_row[j] * (dp_row[j] - delta_f) * scale : 0.0f;
}

// Row-major shapes of one call; every leading dimension in floats.
struct NaiveShapes {
  int n, heads, kv_heads, group, d;
  int q_ld() const { return heads * d; }      // q, d_out, dq rows
  int kv_ld() const { return kv_heads * d; }  // k, v, dk, dv rows
  long long square() const { return (long long)n * n; }
};

// Column-major C [m, n] = op(A) op(B) * alpha + beta C, `batch` times with the given strides.
void gemm_batched(CudaContext& ctx, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n,
                  int k, float alpha, const float* a, int lda, long long stride_a, const float* b,
                  int ldb, long long stride_b, float beta, float* c, int ldc, long long stride_c,
                  int batch, const char* what) {
  check_cublas(
      cublasSgemmStridedBatched(ctx.cublas(), op_a, op_b, m, n, k, &alpha, a, lda, stride_a, b, ldb,
                                stride_b, &beta, c, ldc, stride_c, batch),
      kOp, what);
}

// Steps 1-6 for kv head g (query heads g * group ..), with `s` and `ds` [group, n, n] scratch.
void backward_of_kv_head(CudaContext& ctx, const NaiveShapes& z, int g, float scale, const float* q,
                         const float* k, const float* v, const float* d_out, float* dq, float* dk,
                         float* dv, float* s, float* ds) {
  const int h0 = g * z.group;
  const float* k_g = k + int64_t(g) * z.d;
  const float* v_g = v + int64_t(g) * z.d;
  // Row-major S_h [n, n] = Q_h K_g^T is column-major S_h^T = K_g Q_h^T: op(A) = K_g as the
  // transpose of its column-major view, B = Q_h^T (the column-major view of Q_h).
  gemm_batched(ctx, CUBLAS_OP_T, CUBLAS_OP_N, z.n, z.n, z.d, scale, k_g, z.kv_ld(), 0,
               q + int64_t(h0) * z.d, z.q_ld(), z.d, 0.0f, s, z.n, z.square(), z.group,
               "cublasSgemmStridedBatched(Q K^T)");
  causal_softmax_kernel<<<dim3(unsigned(z.n), unsigned(z.group)), kThreads, 0, ctx.stream()>>>(s,
                                                                                               z.n);
  check_launch(kOp, "causal_softmax_kernel");
  gemm_batched(ctx, CUBLAS_OP_T, CUBLAS_OP_N, z.n, z.n, z.d, 1.0f, v_g, z.kv_ld(), 0,
               d_out + int64_t(h0) * z.d, z.q_ld(), z.d, 0.0f, ds, z.n, z.square(), z.group,
               "cublasSgemmStridedBatched(dO V^T)");
  score_gradient_kernel<<<dim3(unsigned(z.n), unsigned(z.group)), kThreads, 0, ctx.stream()>>>(
      s, ds, z.n, scale);
  check_launch(kOp, "score_gradient_kernel");
  for (int b = 0; b < z.group; ++b) {
    const int h = h0 + b;
    const float beta = b == 0 ? 0.0f : 1.0f;
    // Row-major dV_g [n, d] += P_h^T dO_h: column-major dV_g^T = dO_h^T P_h, where P_h's
    // column-major view is P_h^T (so op T gives P_h).
    gemm_batched(ctx, CUBLAS_OP_N, CUBLAS_OP_T, z.d, z.n, z.n, 1.0f, d_out + int64_t(h) * z.d,
                 z.q_ld(), 0, s + b * z.square(), z.n, 0, beta, dv + int64_t(g) * z.d, z.kv_ld(), 0,
                 1, "cublasSgemmStridedBatched(P^T dO)");
    gemm_batched(ctx, CUBLAS_OP_N, CUBLAS_OP_T, z.d, z.n, z.n, 1.0f, q + int64_t(h) * z.d, z.q_ld(),
                 0, ds + b * z.square(), z.n, 0, beta, dk + int64_t(g) * z.d, z.kv_ld(), 0, 1,
                 "cublasSgemmStridedBatched(dS^T Q)");
  }
  // Row-major dQ_h [n, d] = dS_h K_g: column-major dQ_h^T = K_g^T dS_h^T, both as stored.
  gemm_batched(ctx, CUBLAS_OP_N, CUBLAS_OP_N, z.d, z.n, z.n, 1.0f, k_g, z.kv_ld(), 0, ds, z.n,
               z.square(), 0.0f, dq + int64_t(h0) * z.d, z.q_ld(), z.d, z.group,
               "cublasSgemmStridedBatched(dS K)");
}

}  // namespace

void attention_backward_naive(CudaContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& d_out, Tensor& dq, Tensor& dk, Tensor& dv) {
  require_attention_backward(q, k, v, d_out, dq, dk, dv, kOp);
  const int64_t n = q.dim(0), heads = q.dim(1), head_dim = q.dim(2), kv_heads = k.dim(1);
  if (n == 0) return;
  const int64_t group = heads / kv_heads;
  checked_int(q.numel(), kOp, "q elements");
  checked_int(group * n * n, kOp, "scores of one kv head's query heads");
  const NaiveShapes z{int(n), int(heads), int(kv_heads), int(group), int(head_dim)};
  Tensor s = ctx.empty(DType::F32, {group, n, n}, kOp);
  Tensor ds = ctx.empty(DType::F32, {group, n, n}, kOp);
  const float scale = float(1.0 / std::sqrt(double(head_dim)));  // as the CPU reference
  for (int g = 0; g < z.kv_heads; ++g) {
    backward_of_kv_head(ctx, z, g, scale, q.data_as<const float>(), k.data_as<const float>(),
                        v.data_as<const float>(), d_out.data_as<const float>(), dq.data_as<float>(),
                        dk.data_as<float>(), dv.data_as<float>(), s.data_as<float>(),
                        ds.data_as<float>());
  }
}

}  // namespace llamaq::cuda
