// Tensor: a typed, shaped view of memory on one device, kept alive by a shared owner (a heap
// buffer, a memory-mapped file, a device allocation). Row-major, contiguous.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace llamaq {

enum class Device : uint8_t { Cpu, Cuda };

using Shape = std::vector<int64_t>;

std::string shape_to_string(const Shape& shape);  // "[2, 3]"
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  Tensor(void* data, DType dtype, Shape shape, Device device, std::shared_ptr<const void> owner);

  // A zero-filled host tensor, 64-byte aligned.
  static Tensor zeros(DType dtype, Shape shape);

  bool empty() const { return data_ == nullptr && shape_.empty(); }  // default-constructed
  void* data() const { return data_; }
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data_);
  }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return int(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int64_t numel() const { return shape_numel(shape_); }
  int64_t nbytes() const { return numel() * dtype_bits(dtype_) / 8; }
  const std::shared_ptr<const void>& owner() const { return owner_; }

  // Rows [begin, begin + count) along dimension 0, sharing the storage.
  Tensor slice_rows(int64_t begin, int64_t count) const;
  // The same storage seen with another shape of the same element count.
  Tensor reshaped(Shape shape) const;

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::F32;
  Shape shape_;
  Device device_ = Device::Cpu;
  std::shared_ptr<const void> owner_;
};

}  // namespace llamaq
