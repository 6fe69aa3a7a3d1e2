// Uploads: host tensors and NF4 weights copied to the device once, when the model is built.
#include "backend/cuda/upload.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {

Tensor upload_tensor(CudaContext& ctx, const Tensor& host, const char* op) {
  if (host.device() == Device::Cuda) return host;
  require(host.data() != nullptr || host.numel() == 0, op, "the host tensor has no data");
  Tensor device = ctx.empty(host.dtype(), host.shape(), op);
  if (host.nbytes() > 0) {
    check_cuda(cudaMemcpyAsync(device.data(), host.data(), size_t(host.nbytes()),
                               cudaMemcpyHostToDevice, ctx.stream()),
               op, "cudaMemcpyAsync");
    // The source may be a memory-mapped file the caller unmaps next: finish the copy first.
    check_cuda(cudaStreamSynchronize(ctx.stream()), op, "cudaStreamSynchronize");
  }
  return device;
}

Tensor copy_to_pinned_host(const Tensor& host, const char* op) {
  require(host.device() == Device::Cpu, op, "the table to pin is not a host tensor");
  require(host.data() != nullptr || host.numel() == 0, op, "the host tensor has no data");
  void* pinned = nullptr;
  const size_t bytes = std::max<size_t>(size_t(host.nbytes()), 1);
  check_cuda(cudaHostAlloc(&pinned, bytes, cudaHostAllocMapped | cudaHostAllocPortable), op,
             fmt::format("cudaHostAlloc of {} bytes of pinned host memory", bytes).c_str());
  std::shared_ptr<void> owner(pinned, [](void* p) { cudaFreeHost(p); });
  if (host.nbytes() > 0) std::memcpy(pinned, host.data(), size_t(host.nbytes()));
  void* device_pointer = nullptr;
  check_cuda(cudaHostGetDevicePointer(&device_pointer, pinned, 0), op, "cudaHostGetDevicePointer");
  return Tensor(device_pointer, host.dtype(), host.shape(), Device::Cuda, std::move(owner));
}

std::shared_ptr<const nf4::Nf4Weight> upload_nf4(CudaContext& ctx, const nf4::Nf4Weight& host) {
  const char* op = "upload";
  const auto bad = [&](const char* what) {
    fail_op(op, fmt::format("nf4 weight [{}, {}]: {}", host.rows, host.cols, what));
  };
  if (host.rows <= 0 || host.cols <= 0 || !nf4::valid_block_size(host.block_size)) {
    bad("bad shape or block size");
  }
  if (!is_float_weight(host.original_dtype)) bad("original dtype is not bf16, f16 or f32");
  if (host.packed.dtype() != DType::U8 ||
      host.packed.numel() != nf4::packed_bytes(host.elements())) {
    bad("packed data is not (rows*cols+1)/2 U8 bytes");
  }
  if (host.absmax.numel() != host.blocks()) bad("absmax does not hold one value per block");
  if (host.absmax.dtype() != (host.double_quant ? DType::U8 : DType::F32)) {
    bad("absmax has the wrong dtype for its quantization");
  }
  if (host.double_quant &&
      (host.nested_block_size <= 0 || host.nested_map.numel() != nf4::kNestedCodes ||
       host.nested_map.dtype() != DType::F32 || host.nested_absmax.dtype() != DType::F32 ||
       host.nested_absmax.numel() != nf4::block_count(host.blocks(), host.nested_block_size))) {
    bad("nested_absmax or nested_map does not fit the blocks");
  }
  auto device = std::make_shared<nf4::Nf4Weight>(host);  // shape, flags, code table, offset
  device->packed = upload_tensor(ctx, host.packed, op);
  device->absmax = upload_tensor(ctx, host.absmax, op);
  if (host.double_quant) {
    device->nested_absmax = upload_tensor(ctx, host.nested_absmax, op);
    device->nested_map = upload_tensor(ctx, host.nested_map, op);
  }
  return device;
}

}  // namespace llamaq::cuda
