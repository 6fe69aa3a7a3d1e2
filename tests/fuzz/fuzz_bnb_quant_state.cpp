// Fuzz target: arbitrary bytes as the `quant_state.bitsandbytes__nf4` JSON blob of a 4-bit
// weight. Only llamaq::Error may escape. When the blob parses, the state must survive a
// quant_state_json -> parse_quant_state round trip unchanged, and a small weight built from it
// (packed codes and scales taken from the input bytes) must quantize, dequantize and serialize.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/bnb_tensors.h"
#include "quant/nf4_codec.h"

namespace {

using namespace llamaq;
using namespace llamaq::nf4;

constexpr int64_t kMaxFuzzElements = 1 << 14;

// Deterministic filler: the input bytes, repeated.
uint8_t byte_at(const uint8_t* data, size_t size, int64_t i) {
  return size == 0 ? uint8_t(i) : data[size_t(i) % size];
}

void check_json_round_trip(const QuantState& state) {
  Nf4Weight w;
  w.rows = state.shape[0];
  w.cols = state.shape[1];
  w.block_size = state.block_size;
  w.quant_type = state.quant_type;
  w.original_dtype = state.dtype;
  w.double_quant = state.nested;
  w.nested_block_size = state.nested_block_size;
  w.nested_offset = state.nested_offset;
  const QuantState again = parse_quant_state(quant_state_json(w), "round trip");
  const bool same = again.quant_type == state.quant_type && again.block_size == state.block_size &&
                    again.dtype == state.dtype && again.shape == state.shape &&
                    again.nested == state.nested &&
                    again.nested_block_size == state.nested_block_size &&
                    std::memcmp(&again.nested_offset, &state.nested_offset, sizeof(float)) == 0;
  if (!same) std::abort();
  const double offset = double(state.nested_offset);
  if (std::strtod(python_float_repr(offset).c_str(), nullptr) != offset) std::abort();
}

// A weight with the state's layout whose codes and scales come from the input bytes.
Nf4Weight weight_from_bytes(const QuantState& state, const uint8_t* data, size_t size) {
  Nf4Weight w;
  w.rows = state.shape[0];
  w.cols = state.shape[1];
  w.block_size = state.block_size;
  w.quant_type = state.quant_type;
  w.original_dtype = state.dtype;
  w.double_quant = state.nested;
  w.nested_block_size = state.nested_block_size;
  w.nested_offset = state.nested_offset;
  const float* book = code_book(state.quant_type);
  std::memcpy(w.code_table.data(), book, sizeof(float) * kCodes);
  w.packed = Tensor::zeros(DType::U8, {packed_bytes(w.elements())});
  for (int64_t i = 0; i < w.packed.numel(); ++i) {
    w.packed.data_as<uint8_t>()[i] = byte_at(data, size, i);
  }
  if (!w.double_quant) {
    w.absmax = Tensor::zeros(DType::F32, {w.blocks()});
    for (int64_t b = 0; b < w.blocks(); ++b) {
      w.absmax.data_as<float>()[b] = float(byte_at(data, size, b)) / 16.0f;
    }
    return w;
  }
  w.absmax = Tensor::zeros(DType::U8, {w.blocks()});
  for (int64_t b = 0; b < w.blocks(); ++b)
    w.absmax.data_as<uint8_t>()[b] = byte_at(data, size, b);
  const int64_t n_nested = block_count(w.blocks(), w.nested_block_size);
  w.nested_absmax = Tensor::zeros(DType::F32, {n_nested});
  for (int64_t j = 0; j < n_nested; ++j)
    w.nested_absmax.data_as<float>()[j] = 0.5f;
  w.nested_map = Tensor::zeros(DType::F32, {kNestedCodes});
  std::memcpy(w.nested_map.data(), dynamic_map().data(), sizeof(float) * kNestedCodes);
  return w;
}

void exercise_weight(const QuantState& state, const uint8_t* data, size_t size) {
  const int64_t elements = state.shape[0] * state.shape[1];
  if (elements <= 0 || elements > kMaxFuzzElements) return;
  static ThreadPool pool(2);
  const Nf4Weight w = weight_from_bytes(state, data, size);
  std::vector<float> full(static_cast<size_t>(elements));
  dequantize_rows(w, 0, w.rows, full.data());
  const Tensor dense = dequantize(w, DType::F32, pool);
  if (std::memcmp(dense.data(), full.data(), full.size() * sizeof(float)) != 0) std::abort();
  if (w.rows > 1) {
    std::vector<float> tail(size_t((w.rows - 1) * w.cols));
    dequantize_rows(w, 1, w.rows - 1, tail.data());
    if (std::memcmp(tail.data(), full.data() + w.cols, tail.size() * sizeof(float)) != 0) {
      std::abort();
    }
  }
  std::vector<SafetensorsTensorData> tensors;
  std::deque<std::string> storage;
  append_bnb_tensors("fuzz.weight", w, tensors, storage);
  if (state.quant_type == QuantType::Nf4) {
    const Tensor source = dequantize(w, state.dtype, pool);
    const Nf4Weight again = quantize(source, state.nested, pool, state.block_size);
    if (again.elements() != w.elements()) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const QuantState state =
        parse_quant_state({reinterpret_cast<const char*>(data), size}, "fuzz: tensor `w`");
    if (state.shape.size() != 2) return 0;
    check_json_round_trip(state);
    exercise_weight(state, data, size);
  } catch (const llamaq::Error&) {
  }
  return 0;
}
