// RMSNorm backward as the CPU reference computes it: per row, sum(x^2) and sum(w * dy * x) in
// double, r = 1 / sqrt(mean(x^2) + eps), dx = r * w * dy - r^3 * sum(w dy x) / d * x. One block
// per row.
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

struct RmsnormBackwardParams {
  const float* x;      // [n, d] f32
  const void* weight;  // [d] bf16 | f16 | f32
  const float* dy;     // [n, d] f32
  float* dx;           // [n, d] f32
  int64_t d;
  float eps;
};

// The sums of a and b over the block, in every thread.
__device__ double2 block_sum2(double a, double b) {
  __shared__ double partial[2][kThreads / 32];
  a = warp_sum(a);
  b = warp_sum(b);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) {
    partial[0][warp] = a;
    partial[1][warp] = b;
  }
  __syncthreads();
  double2 total{0, 0};
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) {
    total.x += partial[0][w];
    total.y += partial[1][w];
  }
  return total;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) rmsnorm_backward_kernel(RmsnormBackwardParams p) {
  const int64_t offset = int64_t(blockIdx.x) * p.d;
  const float* x = p.x + offset;
  const float* dy = p.dy + offset;
  const T* w = static_cast<const T*>(p.weight);
  double sum_squares = 0, dot = 0;
  for (int64_t i = threadIdx.x; i < p.d; i += kThreads) {
    const double xi = x[i];
    sum_squares += xi * xi;
    dot += double(to_float(w[i])) * dy[i] * xi;
  }
  const double2 sums = block_sum2(sum_squares, dot);
  const double r = 1.0 / sqrt(sums.x / double(p.d) + double(p.eps));
  const double coef = r * r * r * sums.y / double(p.d);
  for (int64_t i = threadIdx.x; i < p.d; i += kThreads) {
    p.dx[offset + i] = float(r * to_float(w[i]) * dy[i] - coef * x[i]);
  }
}

}  // namespace

void rmsnorm_backward(CudaContext& ctx, const Tensor& x, const Tensor& weight, float eps,
                      const Tensor& dy, Tensor& dx) {
  const char* op = "rmsnorm_backward";
  require_tensor(x, DType::F32, 2, op, "x");
  require_on_device(weight, op, "weight");
  require(is_float_weight(weight.dtype()), op, "weight must be bf16, f16 or f32");
  require(weight.numel() == x.dim(1), op, "weight does not fit the rows of x");
  require_tensor(dy, DType::F32, 2, op, "dy");
  require_shape(dy, x.shape(), op, "dy");
  require_tensor(dx, DType::F32, 2, op, "dx");
  require_shape(dx, x.shape(), op, "dx");
  if (x.numel() == 0) return;
  checked_int(x.dim(0), op, "rows");
  const RmsnormBackwardParams p{x.data_as<const float>(), weight.data(), dy.data_as<const float>(),
                                dx.data_as<float>(),      x.dim(1),      eps};
  const unsigned blocks = unsigned(x.dim(0));
  switch (weight.dtype()) {
    case DType::BF16:
      rmsnorm_backward_kernel<__nv_bfloat16><<<blocks, kThreads, 0, ctx.stream()>>>(p);
      break;
    case DType::F16:
      rmsnorm_backward_kernel<__half><<<blocks, kThreads, 0, ctx.stream()>>>(p);
      break;
    default:
      rmsnorm_backward_kernel<float><<<blocks, kThreads, 0, ctx.stream()>>>(p);
      break;
  }
  check_launch(op, "rmsnorm_backward_kernel");
}

}  // namespace llamaq::cuda
