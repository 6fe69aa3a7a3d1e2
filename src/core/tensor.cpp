#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"

namespace llamaq {

std::string shape_to_string(const Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor::Tensor(void* data, DType dtype, Shape shape, Device device,
               std::shared_ptr<const void> owner)
    : data_(data), dtype_(dtype), shape_(std::move(shape)), device_(device), owner_(std::move(owner)) {}

Tensor Tensor::zeros(DType dtype, Shape shape) {
  const int64_t bytes = shape_numel(shape) * dtype_bits(dtype) / 8;
  const size_t alloc_bytes = size_t((bytes + 63) / 64 * 64);
  void* data = alloc_bytes ? std::aligned_alloc(64, alloc_bytes) : nullptr;
  if (alloc_bytes && !data) throw std::bad_alloc();
  if (data) std::memset(data, 0, alloc_bytes);
  std::shared_ptr<const void> owner(data, [](const void* p) { std::free(const_cast<void*>(p)); });
  return Tensor(data, dtype, std::move(shape), Device::Cpu, std::move(owner));
}

Tensor Tensor::slice_rows(int64_t begin, int64_t count) const {
  if (shape_.empty() || begin < 0 || count < 0 || begin + count > shape_[0]) {
    fail("slice_rows({}, {}) out of range for shape {}", begin, count, shape_to_string(shape_));
  }
  Shape shape = shape_;
  shape[0] = count;
  const int64_t row_bytes = shape_[0] ? nbytes() / shape_[0] : 0;
  return Tensor(static_cast<char*>(data_) + begin * row_bytes, dtype_, std::move(shape), device_,
                owner_);
}

Tensor Tensor::reshaped(Shape shape) const {
  if (shape_numel(shape) != numel()) {
    fail("cannot reshape {} to {}", shape_to_string(shape_), shape_to_string(shape));
  }
  return Tensor(data_, dtype_, std::move(shape), device_, owner_);
}

}  // namespace llamaq
