// Element-wise ops on f32 activations: SwiGLU (silu(gate) * up), the residual add, and the
// conversion of activations to the 16-bit type of a GEMM operand (round to nearest even).
// Grid-stride loops with coalesced accesses; out may alias an input (same index, same thread).
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

struct BinaryParams {
  const float* a;  // [numel] f32
  const float* b;  // [numel] f32
  float* out;      // [numel] f32
  int64_t numel;
};

// silu(g) * u = g / (1 + exp(-g)) * u, in the CPU reference's order of operations.
__global__ void swiglu_kernel(BinaryParams p) {
  allow_dependents_to_launch();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = p.a[i];
    p.out[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), p.b[i]);
  }
}

__global__ void add_kernel(BinaryParams p) {
  allow_dependents_to_launch();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    p.out[i] = __fadd_rn(p.a[i], p.b[i]);
  }
}

__device__ __forceinline__ void store_converted(__nv_bfloat16* out, float v) {
  *out = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void store_converted(__half* out, float v) {
  *out = __float2half_rn(v);
}

template <typename T>
__global__ void convert_kernel(const float* in, T* out, int64_t numel) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    store_converted(out + i, in[i]);
  }
}

void check_binary(const Tensor& a, const Tensor& b, const Tensor& out, const char* op) {
  require_on_device(a, op, "first input");
  require_on_device(b, op, "second input");
  require_on_device(out, op, "out");
  require(a.dtype() == DType::F32 && b.dtype() == DType::F32 && out.dtype() == DType::F32, op,
          "tensors must be f32");
  require(a.shape() == b.shape() && a.shape() == out.shape(), op,
          "shapes differ: " + shape_to_string(a.shape()) + ", " + shape_to_string(b.shape()) +
              ", " + shape_to_string(out.shape()));
}

}  // namespace

void swiglu(CudaContext& ctx, const Tensor& gate, const Tensor& up, Tensor& out) {
  check_binary(gate, up, out, "swiglu");
  if (gate.numel() == 0) return;
  const BinaryParams p{gate.data_as<const float>(), up.data_as<const float>(), out.data_as<float>(),
                       gate.numel()};
  swiglu_kernel<<<grid_size(p.numel, kThreads), kThreads, 0, ctx.stream()>>>(p);
  check_launch("swiglu", "swiglu_kernel");
}

void add_inplace(CudaContext& ctx, Tensor& x, const Tensor& y) {
  check_binary(x, y, x, "add_inplace");
  if (x.numel() == 0) return;
  const BinaryParams p{x.data_as<const float>(), y.data_as<const float>(), x.data_as<float>(),
                       x.numel()};
  add_kernel<<<grid_size(p.numel, kThreads), kThreads, 0, ctx.stream()>>>(p);
  check_launch("add_inplace", "add_kernel");
}

void convert_activations(CudaContext& ctx, const Tensor& x, Tensor& out, const char* op) {
  require_on_device(x, op, "activations");
  require_on_device(out, op, "converted activations");
  require(x.dtype() == DType::F32 && x.numel() == out.numel(), op,
          "activation conversion needs f32 input and an output of the same size");
  if (x.numel() == 0) return;
  const unsigned blocks = grid_size(x.numel(), kThreads);
  const float* in = x.data_as<const float>();
  if (out.dtype() == DType::BF16) {
    convert_kernel<<<blocks, kThreads, 0, ctx.stream()>>>(in, out.data_as<__nv_bfloat16>(),
                                                          x.numel());
  } else if (out.dtype() == DType::F16) {
    convert_kernel<<<blocks, kThreads, 0, ctx.stream()>>>(in, out.data_as<__half>(), x.numel());
  } else {
    fail_op(op, "activations convert only to bf16 or f16");
  }
  check_launch(op, "convert_kernel");
}

}  // namespace llamaq::cuda
