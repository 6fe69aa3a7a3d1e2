// RoPE backward: the gradient of a rotation by theta is the rotation by -theta. Angles, cos and
// sin exactly as the forward kernel (rope.cu) and the CPU take them; one block per token.
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

struct RopeBackwardParams {
  float* grad;               // [n, heads, head_dim] f32, d(out) in, d(in) out
  const int32_t* positions;  // [n] i32
  const float* inv_freq;     // [head_dim / 2] f32
  int heads;
  int half;  // head_dim / 2
};

__global__ void __launch_bounds__(kThreads) rope_backward_kernel(RopeBackwardParams p) {
  extern __shared__ float table[];  // cos [half], then sin [half]
  float* cos_v = table;
  float* sin_v = table + p.half;
  const int64_t t = blockIdx.x;
  const float pos = float(p.positions[t]);
  for (int j = threadIdx.x; j < p.half; j += kThreads) {
    double s, c;
    sincos(double(__fmul_rn(pos, p.inv_freq[j])), &s, &c);
    cos_v[j] = float(c);
    sin_v[j] = float(s);
  }
  __syncthreads();
  const int head_dim = 2 * p.half;
  float* token = p.grad + t * p.heads * head_dim;
  for (int i = threadIdx.x; i < p.heads * p.half; i += kThreads) {
    const int h = i / p.half;
    const int j = i % p.half;
    float* v = token + h * head_dim;
    const float a = v[j];
    const float b = v[j + p.half];
    v[j] = __fadd_rn(__fmul_rn(a, cos_v[j]), __fmul_rn(b, sin_v[j]));
    v[j + p.half] = __fsub_rn(__fmul_rn(b, cos_v[j]), __fmul_rn(a, sin_v[j]));
  }
}

}  // namespace

void rope_backward(CudaContext& ctx, Tensor& grad, const Tensor& positions,
                   const Tensor& inv_freq) {
  const char* op = "rope_backward";
  require_tensor(grad, DType::F32, 3, op, "grad");
  const int64_t n = grad.dim(0);
  require(grad.dim(2) % 2 == 0, op, "head_dim must be even");
  require_tensor(positions, DType::I32, 1, op, "positions");
  require_shape(positions, {n}, op, "positions");
  require_tensor(inv_freq, DType::F32, 1, op, "inv_freq");
  require_shape(inv_freq, {grad.dim(2) / 2}, op, "inv_freq");
  require(grad.dim(2) / 2 <= 4096, op, "head_dim above 8192 is not supported");
  if (grad.numel() == 0) return;
  checked_int(grad.numel(), op, "elements");
  const RopeBackwardParams p{grad.data_as<float>(), positions.data_as<const int32_t>(),
                             inv_freq.data_as<const float>(), int(grad.dim(1)),
                             int(grad.dim(2) / 2)};
  const size_t shared = 2 * size_t(p.half) * sizeof(float);
  rope_backward_kernel<<<unsigned(n), kThreads, shared, ctx.stream()>>>(p);
  check_launch(op, "rope_backward_kernel");
}

}  // namespace llamaq::cuda
