// RMSNorm as the CPU reference computes it: the sum of squares of a row accumulated in double,
// inv_rms = float(1 / sqrt(sum / d + eps)), then out = weight * (x * inv_rms) in fp32. One block
// per row; x may alias out (each element is read before the same thread writes it).
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

struct RmsnormParams {
  const float* x;      // [n, d] f32
  const void* weight;  // [d] bf16 | f16 | f32
  float* out;          // [n, d] f32
  int64_t d;
  float eps;
};

// The sum of `value` over the block, in every thread.
__device__ double block_sum(double value) {
  __shared__ double partial[kThreads / 32];
  value = warp_sum(value);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) partial[warp] = value;
  __syncthreads();
  double total = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w)
    total += partial[w];
  return total;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(RmsnormParams p) {
  const float* row = p.x + int64_t(blockIdx.x) * p.d;
  float* row_out = p.out + int64_t(blockIdx.x) * p.d;
  double sum_squares = 0;
  for (int64_t i = threadIdx.x; i < p.d; i += kThreads) {
    const double v = row[i];
    sum_squares += v * v;
  }
  sum_squares = block_sum(sum_squares);
  const float inv_rms = float(1.0 / sqrt(sum_squares / double(p.d) + double(p.eps)));
  const T* weight = static_cast<const T*>(p.weight);
  for (int64_t i = threadIdx.x; i < p.d; i += kThreads) {
    row_out[i] = __fmul_rn(to_float(weight[i]), __fmul_rn(row[i], inv_rms));
  }
}

void launch_rmsnorm(const RmsnormParams& p, DType weight_dtype, int64_t n, cudaStream_t stream) {
  const unsigned blocks = unsigned(n);
  switch (weight_dtype) {
    case DType::BF16:
      rmsnorm_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(p);
      break;
    case DType::F16:
      rmsnorm_kernel<__half><<<blocks, kThreads, 0, stream>>>(p);
      break;
    default:
      rmsnorm_kernel<float><<<blocks, kThreads, 0, stream>>>(p);
      break;
  }
  check_launch("rmsnorm", "rmsnorm_kernel");
}

}  // namespace

void rmsnorm(CudaContext& ctx, const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  const char* op = "rmsnorm";
  require_tensor(x, DType::F32, 2, op, "x");
  require_on_device(weight, op, "weight");
  require(is_float_weight(weight.dtype()), op, "weight must be bf16, f16 or f32");
  require(weight.numel() == x.dim(1), op,
          "weight has " + std::to_string(weight.numel()) + " elements for rows of " +
              std::to_string(x.dim(1)));
  require_tensor(out, DType::F32, 2, op, "out");
  require_shape(out, x.shape(), op, "out");
  if (x.numel() == 0) return;
  checked_int(x.dim(0), op, "rows");
  const RmsnormParams p{x.data_as<const float>(), weight.data(), out.data_as<float>(), x.dim(1),
                        eps};
  launch_rmsnorm(p, weight.dtype(), x.dim(0), ctx.stream());
}

}  // namespace llamaq::cuda
