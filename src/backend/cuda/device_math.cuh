// Device helpers shared by the kernels: warp reductions and widening of the weight types.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace llamaq::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Programmatic dependent launch (sm_90 and newer; no-ops before): a kernel that calls
// allow_dependents_to_launch() lets a successor launched with programmatic stream serialization
// start before it ends; such a successor calls wait_for_predecessors() before it reads anything
// its predecessors write (it then sees all their writes). The small ops of a decode step call the
// first at entry, so the next weight stream (nf4_gemv_dp4a.cu) is already loading when they end.
__device__ __forceinline__ void allow_dependents_to_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

__device__ __forceinline__ void wait_for_predecessors() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// A 16-byte load of data read once (weights streamed by a GEMV): through the non-coherent path,
// without allocating in L1.
__device__ __forceinline__ uint4 load_streaming(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

__device__ __forceinline__ float to_float(float v) {
  return v;
}
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
__device__ __forceinline__ float to_float(__half v) {
  return __half2float(v);
}

// Stores v as T (bf16: round to nearest even, as the CPU's conversion).
__device__ __forceinline__ void store_as(float* at, float v) {
  *at = v;
}
__device__ __forceinline__ void store_as(__nv_bfloat16* at, float v) {
  *at = __float2bfloat16_rn(v);
}

}  // namespace llamaq::cuda
