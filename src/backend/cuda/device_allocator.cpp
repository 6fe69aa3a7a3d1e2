#include "backend/cuda/device_allocator.h"

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <algorithm>

#include "backend/cuda/cuda_check.h"

namespace llamaq::cuda {

DeviceAllocator::~DeviceAllocator() {
  // Destructors must not throw: errors (e.g. a context already torn down at exit) are ignored.
  std::lock_guard lock(mutex_);
  if (cudaSetDevice(device_) != cudaSuccess) return;
  free_cached();
}

size_t DeviceAllocator::rounded(size_t bytes) {
  // Small blocks in 512-byte steps, large ones in 2 MiB steps: sizes that differ a little (a
  // prompt chunk one token shorter) still share a free list.
  constexpr size_t kSmallStep = 512;
  constexpr size_t kLargeStep = size_t(2) << 20;
  const size_t step = bytes < kLargeStep ? kSmallStep : kLargeStep;
  return std::max(step, (bytes + step - 1) / step * step);
}

void* DeviceAllocator::take_cached(size_t bytes) {
  auto it = free_blocks_.find(bytes);
  if (it == free_blocks_.end() || it->second.empty()) return nullptr;
  void* block = it->second.back();
  it->second.pop_back();
  cached_bytes_ -= bytes;
  return block;
}

void* DeviceAllocator::malloc_or_flush(size_t bytes, const char* what) {
  check_cuda(cudaSetDevice(device_), what, "cudaSetDevice");
  void* block = nullptr;
  cudaError_t status = cudaMalloc(&block, bytes);
  if (status == cudaErrorMemoryAllocation && cached_bytes_ > 0) {
    (void)cudaGetLastError();  // clear the sticky-free allocation error before retrying
    free_cached();
    status = cudaMalloc(&block, bytes);
  }
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    throw Error(fmt::format("cuda {}: cannot allocate {:.1f} MiB of device memory ({} in use): {}",
                            what, double(bytes) / (1 << 20), live_bytes_,
                            cudaGetErrorString(status)));
  }
  return block;
}

std::shared_ptr<void> DeviceAllocator::allocate(size_t bytes, const char* what) {
  const size_t size = rounded(bytes);
  void* block = nullptr;
  {
    std::lock_guard lock(mutex_);
    block = take_cached(size);
    if (!block) block = malloc_or_flush(size, what);
    live_bytes_ += size;
    peak_live_bytes_ = std::max(peak_live_bytes_, live_bytes_);
    peak_reserved_bytes_ = std::max(peak_reserved_bytes_, live_bytes_ + cached_bytes_);
  }
  std::shared_ptr<DeviceAllocator> self = shared_from_this();
  return std::shared_ptr<void>(block, [self, size](void* p) { self->release(p, size); });
}

void DeviceAllocator::release(void* block, size_t bytes) {
  std::lock_guard lock(mutex_);
  free_blocks_[bytes].push_back(block);
  cached_bytes_ += bytes;
  live_bytes_ -= bytes;
}

void DeviceAllocator::free_cached() {
  for (auto& [size, blocks] : free_blocks_) {
    for (void* block : blocks)
      (void)cudaFree(block);
  }
  free_blocks_.clear();
  cached_bytes_ = 0;
}

size_t DeviceAllocator::cached_bytes() const {
  std::lock_guard lock(mutex_);
  return cached_bytes_;
}

size_t DeviceAllocator::live_bytes() const {
  std::lock_guard lock(mutex_);
  return live_bytes_;
}

size_t DeviceAllocator::peak_live_bytes() const {
  std::lock_guard lock(mutex_);
  return peak_live_bytes_;
}

size_t DeviceAllocator::peak_reserved_bytes() const {
  std::lock_guard lock(mutex_);
  return peak_reserved_bytes_;
}

void DeviceAllocator::reset_peaks() {
  std::lock_guard lock(mutex_);
  peak_live_bytes_ = live_bytes_;
  peak_reserved_bytes_ = live_bytes_ + cached_bytes_;
}

}  // namespace llamaq::cuda
