// NF4 -> dense dequantization on the device (for prefill: the dense copy feeds a cuBLAS GEMM),
// bit-exact with nf4::dequantize. The common case (element count a multiple of 32, every weight of
// Llama) takes 16 packed bytes per thread with one 16-byte load (32 elements, always in one
// quantization block, so one scale) and writes them with 16-byte stores; an element count that is
// a multiple of 8 takes 4 bytes per thread; any other shape, including an odd element count, takes
// one packed byte (two elements, always in one block) per thread. Bytes moved per element: 1/2
// read + 2 written (bf16), so the kernel is bandwidth bound at ~2.5 B per weight.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/nf4_decode.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct OutputType;
template <>
struct OutputType<__nv_bfloat16> {
  static constexpr Nf4Rounding kRounding = Nf4Rounding::Bf16;
  static __device__ __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }  // exact
};
template <>
struct OutputType<__half> {
  static constexpr Nf4Rounding kRounding = Nf4Rounding::F16;
  static __device__ __half from(float v) { return __float2half_rn(v); }  // exact
};
template <>
struct OutputType<float> {
  static constexpr Nf4Rounding kRounding = Nf4Rounding::F32;
  static __device__ float from(float v) { return v; }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) nf4_dequantize_kernel(Nf4Params p, T* out) {
  constexpr Nf4Rounding R = OutputType<T>::kRounding;
  __shared__ float code_table[nf4::kCodes];
  __shared__ float nested_map[nf4::kNestedCodes];
  nf4_load_tables<kThreads>(p, code_table, nested_map);
  const int64_t elements = p.rows * p.cols;
  const int64_t bytes = (elements + 1) / 2;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < bytes;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t k = 2 * i;
    const unsigned byte = p.packed[i];
    const float scale = nf4_block_scale(p, nf4_block_of(p, k), nested_map);
    out[k] = OutputType<T>::from(nf4_value<R>(code_table, byte >> 4, scale));
    if (k + 1 < elements)
      out[k + 1] = OutputType<T>::from(nf4_value<R>(code_table, byte & 0xF, scale));
  }
}

// The 8 values of one packed word, rounded as the original dtype, into out[0..7] (16-byte
// aligned for the 16-bit types).
template <typename T>
__device__ __forceinline__ void store_word(unsigned word, float scale, const float* code_table,
                                           T* out) {
  constexpr Nf4Rounding R = OutputType<T>::kRounding;
  struct alignas(16) Values {
    T v[8];
  } values;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 pair =
        nf4_value_pair<R>(code_table, (word >> (8 * j + 4)) & 0xF, (word >> (8 * j)) & 0xF, scale);
    values.v[2 * j] = OutputType<T>::from(pair.x);
    values.v[2 * j + 1] = OutputType<T>::from(pair.y);
  }
  const uint4* src = reinterpret_cast<const uint4*>(&values);
  uint4* dst = reinterpret_cast<uint4*>(out);
#pragma unroll
  for (int j = 0; j < int(sizeof(Values) / sizeof(uint4)); ++j)
    dst[j] = src[j];
}

// The 32 values of 16-byte chunk i (one quantization block: block sizes are multiples of 32) into
// dst[0..31].
template <typename T>
__device__ __forceinline__ void store_chunk(const Nf4Params& p, int64_t i, const float* code_table,
                                            const float* nested_map, T* dst) {
  const uint4 bytes = __ldg(reinterpret_cast<const uint4*>(p.packed) + i);
  const float scale = nf4_block_scale(p, nf4_block_of(p, 32 * i), nested_map);
  store_word(bytes.x, scale, code_table, dst);
  store_word(bytes.y, scale, code_table, dst + 8);
  store_word(bytes.z, scale, code_table, dst + 16);
  store_word(bytes.w, scale, code_table, dst + 24);
}

// 32 values (16 packed bytes, one 16-byte load) per thread; elements % 32 == 0.
template <typename T>
__global__ void __launch_bounds__(kThreads) nf4_dequantize32_kernel(Nf4Params p, T* out) {
  __shared__ float code_table[nf4::kCodes];
  __shared__ float nested_map[nf4::kNestedCodes];
  nf4_load_tables<kThreads>(p, code_table, nested_map);
  const int64_t chunks = p.rows * p.cols / 32;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < chunks;
       i += int64_t(gridDim.x) * kThreads) {
    store_chunk(p, i, code_table, nested_map, out + 32 * i);
  }
}

// The same 32 values per lane, written through shared memory so that the warp's stores are
// contiguous: lane l decodes chunk base + l (a 16-byte load; the warp reads 512 contiguous bytes)
// into its slot of the warp's staging area, then the warp copies the staged 32 x 32 values to
// `out` with 16-byte stores of consecutive addresses (512 bytes per store instruction), where the
// direct kernel's lanes store 16 bytes 64 bytes apart.
template <typename T>
__global__ void __launch_bounds__(kThreads) nf4_dequantize_staged_kernel(Nf4Params p, T* out) {
  constexpr int kWarps = kThreads / 32;
  constexpr int kVectorsPerLane = 32 * int(sizeof(T)) / 16;  // 16-byte vectors of 32 values
  __shared__ float code_table[nf4::kCodes];
  __shared__ float nested_map[nf4::kNestedCodes];
  __shared__ uint4 stage[kWarps * 32 * kVectorsPerLane];
  nf4_load_tables<kThreads>(p, code_table, nested_map);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  uint4* warp_stage = stage + warp * 32 * kVectorsPerLane;
  const int64_t chunks = p.rows * p.cols / 32;
  uint4* out_vectors = reinterpret_cast<uint4*>(out);
  for (int64_t base = (int64_t(blockIdx.x) * kWarps + warp) * 32; base < chunks;
       base += int64_t(gridDim.x) * kWarps * 32) {
    const int64_t i = base + lane;
    if (i < chunks) {
      store_chunk(p, i, code_table, nested_map,
                  reinterpret_cast<T*>(warp_stage + lane * kVectorsPerLane));
    }
    __syncwarp();
    const int64_t valid = chunks - base < 32 ? chunks - base : 32;
    const int vectors = int(valid) * kVectorsPerLane;
    for (int v = lane; v < vectors; v += 32)
      out_vectors[base * kVectorsPerLane + v] = warp_stage[v];
    __syncwarp();
  }
}

// Eight values (one 32-bit word of packed bytes) per thread; elements % 8 == 0.
template <typename T>
__global__ void __launch_bounds__(kThreads) nf4_dequantize8_kernel(Nf4Params p, T* out) {
  __shared__ float code_table[nf4::kCodes];
  __shared__ float nested_map[nf4::kNestedCodes];
  nf4_load_tables<kThreads>(p, code_table, nested_map);
  const int64_t words = p.rows * p.cols / 8;
  const unsigned* packed = reinterpret_cast<const unsigned*>(p.packed);
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < words;
       i += int64_t(gridDim.x) * kThreads) {
    const unsigned word = __ldg(packed + i);
    const float scale = nf4_block_scale(p, nf4_block_of(p, 8 * i), nested_map);
    store_word(word, scale, code_table, out + 8 * i);
  }
}

template <typename T>
void launch_dequantize(const Nf4Params& p, T* out, int64_t elements, bool staged,
                       cudaStream_t stream) {
  if (elements % 32 == 0 && staged) {
    nf4_dequantize_staged_kernel<T>
        <<<grid_size(elements / 32, kThreads), kThreads, 0, stream>>>(p, out);
  } else if (elements % 32 == 0) {
    nf4_dequantize32_kernel<T><<<grid_size(elements / 32, kThreads), kThreads, 0, stream>>>(p, out);
  } else if (elements % 8 == 0) {
    nf4_dequantize8_kernel<T><<<grid_size(elements / 8, kThreads), kThreads, 0, stream>>>(p, out);
  } else {
    nf4_dequantize_kernel<T>
        <<<grid_size((elements + 1) / 2, kThreads), kThreads, 0, stream>>>(p, out);
  }
  check_launch("linear", "nf4_dequantize_kernel");
}

}  // namespace

void dequantize_nf4(CudaContext& ctx, const nf4::Nf4Weight& w, Tensor& out, bool staged) {
  const char* op = "linear";
  require_on_device(out, op, "dequantized weight");
  require(out.dtype() == w.original_dtype && out.shape() == Shape{w.rows, w.cols}, op,
          "the dequantized weight must be [rows, cols] of the weight's original dtype");
  require(reinterpret_cast<uintptr_t>(out.data()) % 16 == 0, op,
          "the dequantized weight must be 16-byte aligned");
  const Nf4Params p = make_nf4_params(w);
  switch (w.original_dtype) {
    case DType::BF16:
      launch_dequantize(p, out.data_as<__nv_bfloat16>(), w.elements(), staged, ctx.stream());
      break;
    case DType::F16:
      launch_dequantize(p, out.data_as<__half>(), w.elements(), staged, ctx.stream());
      break;
    default:
      launch_dequantize(p, out.data_as<float>(), w.elements(), staged, ctx.stream());
      break;
  }
}

}  // namespace llamaq::cuda
