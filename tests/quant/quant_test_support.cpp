// Helpers shared by the quant tests (see quant_test_support.h).
#include "quant/quant_test_support.h"

#include <bit>
#include <cstring>
#include <random>

#include "core/error.h"
#include "io/safetensors.h"

namespace llamaq::test {

TensorMap read_safetensors(const std::filesystem::path& file) {
  const auto st = SafetensorsFile::open(file);
  TensorMap out;
  for (const auto& entry : st.entries()) {
    const Tensor t = st.tensor(entry);
    const auto* p = static_cast<const uint8_t*>(t.data());
    out[entry.name] = {entry.dtype, entry.shape, std::vector<uint8_t>(p, p + t.nbytes())};
  }
  return out;
}

std::filesystem::path write_checkpoint(const std::filesystem::path& dir, const TensorMap& tensors) {
  std::vector<SafetensorsTensorData> data;
  for (const auto& [name, t] : tensors)
    data.push_back({name, t.dtype, t.shape, t.bytes});
  write_safetensors(dir / "model.safetensors", data);
  return dir;
}

Tensor make_weight(DType dtype, int64_t rows, int64_t cols,
                   const std::function<float(int64_t)>& value) {
  Tensor t = Tensor::zeros(dtype, {rows, cols});
  for (int64_t k = 0; k < rows * cols; ++k) {
    const float v = value(k);
    switch (dtype) {
      case DType::BF16:
        t.data_as<uint16_t>()[k] = float_to_bf16(v);
        break;
      case DType::F16:
        t.data_as<uint16_t>()[k] = float_to_fp16(v);
        break;
      case DType::F32:
        t.data_as<float>()[k] = v;
        break;
      default:
        fail("make_weight: unsupported dtype {}", dtype_name(dtype));
    }
  }
  return t;
}

Tensor random_weight(DType dtype, int64_t rows, int64_t cols, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);  // scaled after: no (b - a) overflow
  return make_weight(dtype, rows, cols, [&](int64_t) { return dist(rng) * scale; });
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.data());
  return std::vector<uint8_t>(p, p + t.nbytes());
}

std::vector<float> floats_of(const Tensor& t) {
  std::vector<float> out(size_t(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    switch (t.dtype()) {
      case DType::BF16:
        out[i] = bf16_to_float(t.data_as<const uint16_t>()[i]);
        break;
      case DType::F16:
        out[i] = fp16_to_float(t.data_as<const uint16_t>()[i]);
        break;
      case DType::F32:
        out[i] = t.data_as<const float>()[i];
        break;
      default:
        fail("floats_of: unsupported dtype {}", dtype_name(t.dtype()));
    }
  }
  return out;
}

Tensor to_tensor(const OwnedTensor& t) {
  Tensor out = Tensor::zeros(t.dtype, t.shape);
  if (!t.bytes.empty()) std::memcpy(out.data(), t.bytes.data(), t.bytes.size());
  return out;
}

uint32_t bits(float value) {
  return std::bit_cast<uint32_t>(value);
}

}  // namespace llamaq::test
