// Cross-entropy over the vocabulary, one block per row of logits: the row maximum, the sum of
// exp(x - max) in double, lse = max + log(sum); loss = lse - x[target]; the row is overwritten
// with (softmax - onehot) / normalizer, as the CPU reference computes it. Rows whose target is
// outside [0, vocab) (kIgnoreLabel) get loss 0 and a zero gradient; the model checks the others.
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 512;

struct CrossEntropyParams {
  float* logits;           // [rows, vocab] f32, gradient out
  const int32_t* targets;  // [rows] i32
  double* losses;          // [rows] f64
  int64_t vocab;
  double inv_normalizer;
  double normalizer;
};

__device__ float block_max(float v, float* scratch) {
  v = warp_max(v);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float m = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w)
    m = fmaxf(m, scratch[w]);
  __syncthreads();
  return m;
}

__device__ double block_sum(double v, double* scratch) {
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  double s = 0;
  for (int w = 0; w < kThreads / 32; ++w)
    s += scratch[w];
  __syncthreads();
  return s;
}

__global__ void __launch_bounds__(kThreads) cross_entropy_kernel(CrossEntropyParams p) {
  __shared__ float max_scratch[kThreads / 32];
  __shared__ double sum_scratch[kThreads / 32];
  float* row = p.logits + int64_t(blockIdx.x) * p.vocab;
  const int32_t target = p.targets[blockIdx.x];
  if (target < 0 || target >= p.vocab) {
    for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads)
      row[j] = 0.0f;
    if (threadIdx.x == 0) p.losses[blockIdx.x] = 0;
    return;
  }
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads)
    m = fmaxf(m, row[j]);
  m = block_max(m, max_scratch);
  double sum = 0;
  for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads)
    sum += exp(double(row[j]) - m);
  sum = block_sum(sum, sum_scratch);
  const double lse = double(m) + log(sum);
  const float target_logit = row[target];
  __syncthreads();  // every thread has read row[target] before it is overwritten
  if (threadIdx.x == 0) p.losses[blockIdx.x] = lse - double(target_logit);
  for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads) {
    float g = float(exp(double(row[j]) - lse) / p.normalizer);
    if (j == target) g = __fsub_rn(g, float(p.inv_normalizer));
    row[j] = g;
  }
}

}  // namespace

void cross_entropy(CudaContext& ctx, Tensor& logits, const Tensor& targets, double normalizer,
                   Tensor& losses) {
  const char* op = "cross_entropy";
  require_tensor(logits, DType::F32, 2, op, "logits");
  const int64_t rows = logits.dim(0);
  require_tensor(targets, DType::I32, 1, op, "targets");
  require_shape(targets, {rows}, op, "targets");
  require_tensor(losses, DType::F64, 1, op, "losses");
  require_shape(losses, {rows}, op, "losses");
  require(normalizer > 0, op, "the normalizer must be > 0");
  if (rows == 0) return;
  checked_int(rows, op, "rows");
  const CrossEntropyParams p{logits.data_as<float>(),  targets.data_as<const int32_t>(),
                             losses.data_as<double>(), logits.dim(1),
                             1.0 / normalizer,         normalizer};
  cross_entropy_kernel<<<unsigned(rows), kThreads, 0, ctx.stream()>>>(p);
  check_launch(op, "cross_entropy_kernel");
}

}  // namespace llamaq::cuda
