// The optimizer's device ops: AdamW on the f32 adapter parameters with their moments on the
// device (the CPU reference's order of operations, each product and sum rounded on its own), and
// the global sum of squares of the gradients for clipping (double partial sums per block, added
// with double atomics into one device value).
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

struct AdamWParams {
  float* param;       // [numel] f32
  const float* grad;  // [numel] f32
  float* exp_avg;     // [numel] f32
  float* exp_avg_sq;  // [numel] f32
  int64_t numel;
  AdamWUpdate u;
};

__global__ void adamw_kernel(AdamWParams p) {
  const float b1 = p.u.beta1, b2 = p.u.beta2;
  const float one_minus_b1 = 1.0f - b1, one_minus_b2 = 1.0f - b2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = p.grad[i];
    const float decayed = __fmul_rn(p.param[i], p.u.decay);
    const float m = __fadd_rn(__fmul_rn(b1, p.exp_avg[i]), __fmul_rn(one_minus_b1, g));
    const float v =
        __fadd_rn(__fmul_rn(b2, p.exp_avg_sq[i]), __fmul_rn(__fmul_rn(one_minus_b2, g), g));
    p.exp_avg[i] = m;
    p.exp_avg_sq[i] = v;
    const float denom = float(sqrt(double(v)) / p.u.bias_correction2_sqrt + p.u.eps);
    p.param[i] = __fsub_rn(decayed, __fdiv_rn(__fmul_rn(p.u.step_size, m), denom));
  }
}

__global__ void __launch_bounds__(kThreads)
    sum_squares_kernel(const float* x, int64_t numel, double* total) {
  __shared__ double partial[kThreads / 32];
  double sum = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    sum += double(x[i]) * double(x[i]);
  }
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double block = 0;
    for (int w = 0; w < kThreads / 32; ++w)
      block += partial[w];
    atomicAdd(total, block);
  }
}

}  // namespace

void adamw_step(CudaContext& ctx, Tensor& param, const Tensor& grad, Tensor& exp_avg,
                Tensor& exp_avg_sq, const AdamWUpdate& update) {
  const char* op = "adamw_step";
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&param, "param"},
                                {&grad, "grad"},
                                {&exp_avg, "exp_avg"},
                                {&exp_avg_sq, "exp_avg_sq"}}) {
    require_on_device(*t, op, name);
    require(t->dtype() == DType::F32, op, std::string(name) + " must be f32");
    require_shape(*t, param.shape(), op, name);
  }
  if (param.numel() == 0) return;
  const AdamWParams p{param.data_as<float>(),
                      grad.data_as<const float>(),
                      exp_avg.data_as<float>(),
                      exp_avg_sq.data_as<float>(),
                      param.numel(),
                      update};
  adamw_kernel<<<grid_size(p.numel, kThreads, 4096), kThreads, 0, ctx.stream()>>>(p);
  check_launch(op, "adamw_kernel");
}

double sum_of_squares(CudaContext& ctx, std::span<const Tensor> xs) {
  const char* op = "sum_of_squares";
  Tensor total = ctx.zeros(DType::F64, {1}, op);
  for (const Tensor& x : xs) {
    require_on_device(x, op, "x");
    require(x.dtype() == DType::F32, op, "tensors must be f32");
    if (x.numel() == 0) continue;
    sum_squares_kernel<<<grid_size(x.numel(), kThreads, 1024), kThreads, 0, ctx.stream()>>>(
        x.data_as<const float>(), x.numel(), total.data_as<double>());
    check_launch(op, "sum_squares_kernel");
  }
  double host = 0;
  check_cuda(
      cudaMemcpyAsync(&host, total.data(), sizeof(double), cudaMemcpyDeviceToHost, ctx.stream()),
      op, "cudaMemcpyAsync");
  ctx.synchronize(op);
  return host;
}

}  // namespace llamaq::cuda
