// Helpers shared by the quant tests: building weights, reading whole safetensors files into
// owned maps, writing small checkpoints, and comparing tensors bit for bit.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "quant/nf4.h"

namespace llamaq::test {

struct OwnedTensor {
  DType dtype = DType::U8;
  Shape shape;
  std::vector<uint8_t> bytes;
};
using TensorMap = std::map<std::string, OwnedTensor>;

// Every tensor of one safetensors file, copied.
TensorMap read_safetensors(const std::filesystem::path& file);

// Writes `tensors` as `<dir>/model.safetensors` and returns `dir`.
std::filesystem::path write_checkpoint(const std::filesystem::path& dir, const TensorMap& tensors);

// A host tensor [rows, cols] of `dtype` whose element k is value(k) rounded to `dtype`.
Tensor make_weight(DType dtype, int64_t rows, int64_t cols,
                   const std::function<float(int64_t)>& value);

// Uniform random values in [-scale, scale] from a fixed seed.
Tensor random_weight(DType dtype, int64_t rows, int64_t cols, uint32_t seed, float scale = 1.0f);

// The raw bytes of a host tensor.
std::vector<uint8_t> bytes_of(const Tensor& t);

// Values of a BF16, F16 or F32 tensor as float.
std::vector<float> floats_of(const Tensor& t);

// An owned tensor as a Tensor sharing nothing (a copy).
Tensor to_tensor(const OwnedTensor& t);

// The float32 bit pattern of a value.
uint32_t bits(float value);

}  // namespace llamaq::test
