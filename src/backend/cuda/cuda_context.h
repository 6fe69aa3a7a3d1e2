// What every CUDA op needs: the device, the backend's one stream, the cuBLAS handle, the caching
// allocator for scratch tensors and a small host-mapped status block through which kernels report
// bad inputs (an out-of-range token id) without a synchronization on the hot path.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/device_allocator.h"
#include "core/tensor.h"

namespace llamaq::cuda {

// Written by kernels (host-mapped memory), read by the host after a synchronization.
struct DeviceStatus {
  int32_t bad_token_flag;   // 1 once an embedding lookup saw an id outside [0, vocab)
  int32_t bad_token_id;     // the first such id
  int32_t bad_token_vocab;  // the vocabulary size it was checked against
};

class CudaContext {
 public:
  explicit CudaContext(int device);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  int multiprocessors() const { return multiprocessors_; }
  DeviceStatus* device_status() const { return device_status_; }  // device view of the status

  // Arrival counters for "the last block to finish does the rest" kernels (the split-KV merge):
  // kArrivalCounters zeroed unsigned ints on the device. A kernel counts its
  // blocks on counters [0, count) and its last block sets them back to 0, so that the next kernel
  // on the stream (all run in stream order, graphs included) finds them zeroed. Null when more
  // than kArrivalCounters are asked for; callers then take their unfused path.
  static constexpr int64_t kArrivalCounters = 16384;
  unsigned* arrival_counters(int64_t count) const {
    return count <= kArrivalCounters ? arrival_counters_ : nullptr;
  }

  // A device tensor with undefined contents (scratch), or zero-filled on the stream.
  Tensor empty(DType dtype, Shape shape, const char* op);
  Tensor zeros(DType dtype, Shape shape, const char* op);

  // Stream capture (CUDA graphs): between begin_capture and end_capture the stream records work
  // instead of running it, and every block empty()/zeros() hands out is also kept in a list that
  // end_capture returns, so the graph can own them. end_capture also ends a capture that failed.
  void begin_capture(const char* op);
  struct Captured {
    cudaGraph_t graph = nullptr;  // null when the capture failed (the error was thrown before)
    std::vector<std::shared_ptr<void>> allocations;
  };
  Captured end_capture(const char* op);
  bool capturing() const { return capturing_; }

  DeviceAllocator& allocator() { return *allocator_; }
  const DeviceAllocator& allocator() const { return *allocator_; }

  // Makes this context's device current on the calling thread.
  void activate(const char* op) const;
  // Waits for the stream, then throws for any error a kernel reported through the status block.
  void synchronize(const char* op);

 private:
  int device_;
  int multiprocessors_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::shared_ptr<DeviceAllocator> allocator_;
  std::shared_ptr<void> cublas_workspace_;  // fixed, so cuBLAS never allocates inside a graph
  std::shared_ptr<void> arrival_counter_block_;
  unsigned* arrival_counters_ = nullptr;
  bool capturing_ = false;
  std::vector<std::shared_ptr<void>> captured_allocations_;
  DeviceStatus* host_status_ = nullptr;
  DeviceStatus* device_status_ = nullptr;
};

}  // namespace llamaq::cuda
