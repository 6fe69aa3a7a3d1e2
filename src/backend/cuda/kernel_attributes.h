// Kernel launch settings looked up once per process: raising a kernel's dynamic shared memory
// limit above 48 KB once per device (the attribute belongs to the function on one device), so
// that the hot path (and a CUDA graph capture around it) does not call cudaFuncSetAttribute on
// every launch; whether the device has programmatic dependent launch. fmt-free for .cu files.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "backend/cuda/cuda_check.h"

namespace llamaq::cuda {

template <auto kKernel>
void allow_dynamic_shared_memory(int bytes, const char* op, const char* call) {
  static std::atomic<uint64_t> done_devices{0};  // bit d: set on device d (d < 64)
  int device = 0;
  check_cuda(cudaGetDevice(&device), op, "cudaGetDevice");
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (bit != 0 && (done_devices.load(std::memory_order_acquire) & bit) != 0) return;
  check_cuda(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), op,
             call);
  done_devices.fetch_or(bit, std::memory_order_release);
}

// Whether the current device takes programmatic dependent launch (compute capability 9.0 and up),
// looked up once per process (a machine of mixed GPU kinds would only lose the early launch).
inline bool device_has_pdl(const char* op) {
  static std::atomic<int> cached{-1};  // -1 unknown, 0 no, 1 yes
  int value = cached.load(std::memory_order_relaxed);
  if (value >= 0) return value == 1;
  int device = 0, major = 0;
  check_cuda(cudaGetDevice(&device), op, "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), op,
             "cudaDeviceGetAttribute(compute capability)");
  value = major >= 9 ? 1 : 0;
  cached.store(value, std::memory_order_relaxed);
  return value == 1;
}

// A cudaLaunchKernelEx configuration with programmatic stream serialization where the device has
// it (the kernel may then start before the previous one on the stream ends; see device_math.cuh).
class PdlLaunchConfig {
 public:
  PdlLaunchConfig(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, const char* op) {
    config_.gridDim = grid;
    config_.blockDim = block;
    config_.dynamicSmemBytes = shared_bytes;
    config_.stream = stream;
    attribute_[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute_[0].val.programmaticStreamSerializationAllowed = 1;
    config_.attrs = attribute_;
    config_.numAttrs = device_has_pdl(op) ? 1 : 0;
  }
  PdlLaunchConfig(const PdlLaunchConfig&) = delete;
  PdlLaunchConfig& operator=(const PdlLaunchConfig&) = delete;
  const cudaLaunchConfig_t* get() const { return &config_; }

 private:
  cudaLaunchConfig_t config_ = {};
  cudaLaunchAttribute attribute_[1] = {};
};

}  // namespace llamaq::cuda
