// A caching allocator of device memory. The model allocates the same activation shapes on every
// forward call, so freed blocks are kept in per-size free lists and handed out again instead of
// calling cudaMalloc/cudaFree (which synchronize the device) each time. All work runs on one
// stream, so a block freed on the host while kernels still use it is only reused by work queued
// after them. When cudaMalloc runs out of memory the cache is emptied and the call retried.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace llamaq::cuda {

class DeviceAllocator : public std::enable_shared_from_this<DeviceAllocator> {
 public:
  explicit DeviceAllocator(int device) : device_(device) {}
  ~DeviceAllocator();
  DeviceAllocator(const DeviceAllocator&) = delete;
  DeviceAllocator& operator=(const DeviceAllocator&) = delete;

  // At least `bytes` bytes (256-byte aligned); the owner returns the block to the cache when
  // the last reference goes. Throws llamaq::Error naming `what` when the device is out of memory.
  std::shared_ptr<void> allocate(size_t bytes, const char* what);

  size_t cached_bytes() const;
  size_t live_bytes() const;
  // Highest live bytes, and highest live + cached bytes (what the process holds from the driver),
  // since construction or the last reset_peaks().
  size_t peak_live_bytes() const;
  size_t peak_reserved_bytes() const;
  void reset_peaks();

 private:
  static size_t rounded(size_t bytes);
  void* take_cached(size_t bytes);
  void* malloc_or_flush(size_t bytes, const char* what);
  void release(void* block, size_t bytes);
  void free_cached();  // caller holds mutex_

  int device_;
  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_blocks_;  // rounded size -> blocks
  size_t cached_bytes_ = 0;
  size_t live_bytes_ = 0;
  size_t peak_live_bytes_ = 0;
  size_t peak_reserved_bytes_ = 0;
};

}  // namespace llamaq::cuda
