// Element-wise ops on f32 activations: SwiGLU (silu(gate) * up), the residual add, and the
// conversion of activations to the 16-bit type of a GEMM operand (round to nearest even).
// Grid-stride loops with coalesced accesses, four elements per access when the tensors are
// 16-byte aligned; out may alias an input (same index, same thread).
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
  bool vectorized;  // all three 16-byte aligned: four elements per float4 access
};

// silu(g) * u = g / (1 + exp(-g)) * u, in the CPU reference's order of operations.
struct SwigluOp {
  __device__ float operator()(float g, float u) const {
    return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
  }
};

struct AddOp {
  __device__ float operator()(float a, float b) const { return __fadd_rn(a, b); }
};

// out[i] = op(a[i], b[i]); float4 accesses when aligned, then the last numel % 4 elements.
template <typename Op>
__global__ void binary_kernel(BinaryParams p, Op op) {
  allow_dependents_to_launch();
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (p.vectorized) {
    const int64_t quads = p.numel / 4;
    for (int64_t i = first; i < quads; i += stride) {
      const float4 a = reinterpret_cast<const float4*>(p.a)[i];
      const float4 b = reinterpret_cast<const float4*>(p.b)[i];
      reinterpret_cast<float4*>(p.out)[i] =
          make_float4(op(a.x, b.x), op(a.y, b.y), op(a.z, b.z), op(a.w, b.w));
    }
    done = 4 * quads;
  }
  for (int64_t i = done + first; i < p.numel; i += stride)
    p.out[i] = op(p.a[i], p.b[i]);
}

__device__ __forceinline__ void store_converted(__nv_bfloat16* out, float v) {
  *out = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void store_converted(__half* out, float v) {
  *out = __float2half_rn(v);
}
__device__ __forceinline__ void store_converted4(__nv_bfloat16* out, float4 v) {
  __nv_bfloat162* pair = reinterpret_cast<__nv_bfloat162*>(out);
  pair[0] = __floats2bfloat162_rn(v.x, v.y);
  pair[1] = __floats2bfloat162_rn(v.z, v.w);
}
__device__ __forceinline__ void store_converted4(__half* out, float4 v) {
  __half2* pair = reinterpret_cast<__half2*>(out);
  pair[0] = __floats2half2_rn(v.x, v.y);
  pair[1] = __floats2half2_rn(v.z, v.w);
}

// `vectorized`: in 16-byte and out 8-byte aligned.
template <typename T>
__global__ void convert_kernel(const float* in, T* out, int64_t numel, bool vectorized) {
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vectorized) {
    const int64_t quads = numel / 4;
    for (int64_t i = first; i < quads; i += stride)
      store_converted4(out + 4 * i, reinterpret_cast<const float4*>(in)[i]);
    done = 4 * quads;
  }
  for (int64_t i = done + first; i < numel; i += stride)
    store_converted(out + i, in[i]);
}

bool aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

BinaryParams binary_params(const Tensor& a, const Tensor& b, Tensor& out) {
  BinaryParams p{a.data_as<const float>(), b.data_as<const float>(), out.data_as<float>(),
                 a.numel(), false};
  p.vectorized = aligned(p.a, 16) && aligned(p.b, 16) && aligned(p.out, 16);
  return p;
}

// Threads for a grid-stride loop over numel elements, four per thread when vectorized.
unsigned elementwise_blocks(int64_t numel, bool vectorized) {
  return grid_size(vectorized ? (numel + 3) / 4 : numel, kThreads);
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
  const BinaryParams p = binary_params(gate, up, out);
  binary_kernel<<<elementwise_blocks(p.numel, p.vectorized), kThreads, 0, ctx.stream()>>>(
      p, SwigluOp{});
  check_launch("swiglu", "binary_kernel<SwigluOp>");
}

void add_inplace(CudaContext& ctx, Tensor& x, const Tensor& y) {
  check_binary(x, y, x, "add_inplace");
  if (x.numel() == 0) return;
  const BinaryParams p = binary_params(x, y, x);
  binary_kernel<<<elementwise_blocks(p.numel, p.vectorized), kThreads, 0, ctx.stream()>>>(p,
                                                                                          AddOp{});
  check_launch("add_inplace", "binary_kernel<AddOp>");
}

void convert_activations(CudaContext& ctx, const Tensor& x, Tensor& out, const char* op) {
  require_on_device(x, op, "activations");
  require_on_device(out, op, "converted activations");
  require(x.dtype() == DType::F32 && x.numel() == out.numel(), op,
          "activation conversion needs f32 input and an output of the same size");
  if (x.numel() == 0) return;
  const float* in = x.data_as<const float>();
  const bool vectorized = aligned(in, 16) && aligned(out.data(), 8);
  const unsigned blocks = elementwise_blocks(x.numel(), vectorized);
  if (out.dtype() == DType::BF16) {
    convert_kernel<<<blocks, kThreads, 0, ctx.stream()>>>(in, out.data_as<__nv_bfloat16>(),
                                                          x.numel(), vectorized);
  } else if (out.dtype() == DType::F16) {
    convert_kernel<<<blocks, kThreads, 0, ctx.stream()>>>(in, out.data_as<__half>(), x.numel(),
                                                          vectorized);
  } else {
    fail_op(op, "activations convert only to bf16 or f16");
  }
  check_launch(op, "convert_kernel");
}

}  // namespace llamaq::cuda
