#include "backend/cuda/cuda_context.h"

#include <fmt/format.h>

#include "backend/cuda/cuda_check.h"

namespace llamaq::cuda {

CudaContext::CudaContext(int device)
    : device_(device), allocator_(std::make_shared<DeviceAllocator>(device)) {
  int count = 0;
  check_cuda(cudaGetDeviceCount(&count), "init", "cudaGetDeviceCount");
  if (device < 0 || device >= count) {
    throw Error(
        fmt::format("cuda init: device {} does not exist ({} CUDA devices)", device, count));
  }
  check_cuda(cudaSetDevice(device), "init", "cudaSetDevice");
  check_cuda(cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, device),
             "init", "cudaDeviceGetAttribute");
  check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "init",
             "cudaStreamCreate");
  check_cublas(cublasCreate(&cublas_), "init", "cublasCreate");
  check_cublas(cublasSetStream(cublas_, stream_), "init", "cublasSetStream");
  // Plain fp32 accumulation: no TF32 or reduced-precision reductions behind our back.
  check_cublas(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH), "init", "cublasSetMathMode");
  // A workspace of our own (32 MiB, NVIDIA's recommendation for Hopper) instead of cuBLAS's
  // internal pool, which may allocate during a stream capture.
  constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;
  cublas_workspace_ = allocator_->allocate(kCublasWorkspaceBytes, "init");
  check_cublas(cublasSetWorkspace(cublas_, cublas_workspace_.get(), kCublasWorkspaceBytes), "init",
               "cublasSetWorkspace");
  arrival_counter_block_ = allocator_->allocate(kArrivalCounters * sizeof(unsigned), "init");
  arrival_counters_ = static_cast<unsigned*>(arrival_counter_block_.get());
  check_cuda(cudaMemsetAsync(arrival_counters_, 0, kArrivalCounters * sizeof(unsigned), stream_),
             "init", "cudaMemsetAsync(arrival counters)");
  check_cuda(cudaHostAlloc(reinterpret_cast<void**>(&host_status_), sizeof(DeviceStatus),
                           cudaHostAllocMapped),
             "init", "cudaHostAlloc");
  *host_status_ = DeviceStatus{};
  check_cuda(cudaHostGetDevicePointer(reinterpret_cast<void**>(&device_status_), host_status_, 0),
             "init", "cudaHostGetDevicePointer");
}

CudaContext::~CudaContext() {
  (void)cudaSetDevice(device_);
  if (stream_) (void)cudaStreamSynchronize(stream_);
  if (cublas_) (void)cublasDestroy(cublas_);
  if (host_status_) (void)cudaFreeHost(host_status_);
  if (stream_) (void)cudaStreamDestroy(stream_);
}

Tensor CudaContext::empty(DType dtype, Shape shape, const char* op) {
  const int64_t numel = shape_numel(shape);
  const size_t bytes = size_t((numel * dtype_bits(dtype) + 7) / 8);
  std::shared_ptr<void> block = allocator_->allocate(std::max<size_t>(bytes, 1), op);
  void* data = block.get();
  if (capturing_) captured_allocations_.push_back(block);
  return Tensor(data, dtype, std::move(shape), Device::Cuda, std::move(block));
}

Tensor CudaContext::zeros(DType dtype, Shape shape, const char* op) {
  Tensor t = empty(dtype, std::move(shape), op);
  if (t.nbytes() > 0) {
    check_cuda(cudaMemsetAsync(t.data(), 0, size_t(t.nbytes()), stream_), op, "cudaMemsetAsync");
  }
  return t;
}

void CudaContext::begin_capture(const char* op) {
  if (capturing_) throw Error(fmt::format("cuda {}: a capture is already in progress", op));
  // Relaxed: allocating (cudaMalloc on a cache miss) is allowed while the stream records.
  check_cuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed), op,
             "cudaStreamBeginCapture");
  capturing_ = true;
  captured_allocations_.clear();
}

CudaContext::Captured CudaContext::end_capture(const char* op) {
  Captured captured;
  capturing_ = false;
  captured.allocations = std::move(captured_allocations_);
  captured_allocations_.clear();
  check_cuda(cudaStreamEndCapture(stream_, &captured.graph), op, "cudaStreamEndCapture");
  return captured;
}

void CudaContext::activate(const char* op) const {
  check_cuda(cudaSetDevice(device_), op, "cudaSetDevice");
}

void CudaContext::synchronize(const char* op) {
  check_cuda(cudaStreamSynchronize(stream_), op, "cudaStreamSynchronize");
  if (host_status_->bad_token_flag) {
    const DeviceStatus seen = *host_status_;
    *host_status_ = DeviceStatus{};
    throw Error(fmt::format("cuda embedding: token id {} is out of range [0, {}) (reported at {})",
                            seen.bad_token_id, seen.bad_token_vocab, op));
  }
}

}  // namespace llamaq::cuda
