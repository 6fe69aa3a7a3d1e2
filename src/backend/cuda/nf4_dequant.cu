// NF4 -> dense dequantization on the device (for prefill: the dense copy feeds a cuBLAS GEMM),
// bit-exact with nf4::dequantize. One thread per packed byte (two elements, which always share a
// block: block sizes are even); any shape, including an odd element count.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/nf4_decode.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void store_value(__nv_bfloat16* out, float v) {
  *out = __float2bfloat16_rn(v);  // exact: v is already a bf16 value
}
__device__ __forceinline__ void store_value(__half* out, float v) { *out = __float2half_rn(v); }
__device__ __forceinline__ void store_value(float* out, float v) { *out = v; }

template <typename T>
__global__ void nf4_dequantize_kernel(Nf4Params p, T* out) {
  __shared__ float code_table[nf4::kCodes];
  if (threadIdx.x < nf4::kCodes) code_table[threadIdx.x] = p.code_table[threadIdx.x];
  __syncthreads();
  const int64_t elements = p.rows * p.cols;
  const int64_t bytes = (elements + 1) / 2;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < bytes;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t k = 2 * i;
    const unsigned byte = p.packed[i];
    const float scale = nf4_block_scale(p, k / p.block_size, p.nested_map);
    store_value(out + k, nf4_value(code_table, byte >> 4, scale, p.rounding));
    if (k + 1 < elements) store_value(out + k + 1, nf4_value(code_table, byte & 0xF, scale, p.rounding));
  }
}

}  // namespace

void dequantize_nf4(CudaContext& ctx, const nf4::Nf4Weight& w, Tensor& out) {
  const char* op = "linear";
  require_on_device(out, op, "dequantized weight");
  require(out.dtype() == w.original_dtype && out.shape() == Shape{w.rows, w.cols}, op,
          "the dequantized weight must be [rows, cols] of the weight's original dtype");
  const Nf4Params p = make_nf4_params(w);
  const unsigned blocks = grid_size(nf4::packed_bytes(w.elements()), kThreads);
  switch (w.original_dtype) {
    case DType::BF16:
      nf4_dequantize_kernel<<<blocks, kThreads, 0, ctx.stream()>>>(p, out.data_as<__nv_bfloat16>());
      break;
    case DType::F16:
      nf4_dequantize_kernel<<<blocks, kThreads, 0, ctx.stream()>>>(p, out.data_as<__half>());
      break;
    default:
      nf4_dequantize_kernel<<<blocks, kThreads, 0, ctx.stream()>>>(p, out.data_as<float>());
      break;
  }
  check_launch(op, "nf4_dequantize_kernel");
}

}  // namespace llamaq::cuda
