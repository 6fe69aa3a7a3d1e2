// How transformers + bitsandbytes store a 4-bit linear in safetensors (specs §2): the packed
// weight plus `absmax`, `quant_map`, `nested_absmax`, `nested_quant_map` and the
// `quant_state.bitsandbytes__nf4` JSON blob, all under the weight's name; and the
// `quantization_config` of config.json.
#pragma once

#include <nlohmann/json.hpp>

#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "quant/nf4.h"

namespace llamaq::nf4 {

// The non-tensor part of a bitsandbytes QuantState: the `quant_state.bitsandbytes__<type>` JSON.
struct QuantState {
  QuantType quant_type = QuantType::Nf4;
  int64_t block_size = kDefaultBlockSize;  // "blocksize"
  DType dtype = DType::BF16;               // "dtype": the original weight's dtype
  Shape shape;                             // "shape": the logical weight shape
  bool nested = false;                     // the three nested_* keys are present
  int64_t nested_block_size = kNestedBlockSize;
  float nested_offset = 0;  // read as a double, used as float32 (as bitsandbytes does)
};

// Parses and validates a quant_state JSON blob (trailing NULs and whitespace are ignored).
// `label` (e.g. "<file>: tensor `<name>`") starts every error message. Throws llamaq::Error.
QuantState parse_quant_state(std::string_view json, std::string_view label);

// A double as Python's repr() (and so json.dumps) writes it: the shortest round-trip digits,
// fixed notation for exponents -4..15 with a ".0" for integral values, else "1.5e-05" style.
std::string python_float_repr(double value);

// True when `<weight_name>.quant_state.bitsandbytes__nf4` (or __fp4) is in the checkpoint.
bool is_bnb_quantized(const CheckpointTensors& checkpoint, const std::string& weight_name);

// Reads and validates the tensor group of one quantized linear whose logical shape must be
// [rows, cols]. Appends every tensor name it consumed to `used`. Throws llamaq::Error naming
// the tensor and file for any inconsistency (wrong nibble count, absmax length, unknown
// quant_type, corrupt JSON, shape mismatch, ...).
Nf4Weight read_bnb_weight(const CheckpointTensors& checkpoint, const std::string& weight_name,
                          int64_t rows, int64_t cols, std::vector<std::string>& used);

// The quant_state JSON exactly as Python's json.dumps writes it for QuantState.as_dict.
std::string quant_state_json(const Nf4Weight& w);

// Appends the tensors of one quantized linear in transformers' layout. `storage` keeps the JSON
// blob alive; the other tensors point into `w`, which must outlive the write.
void append_bnb_tensors(const std::string& weight_name, const Nf4Weight& w,
                        std::vector<SafetensorsTensorData>& out, std::deque<std::string>& storage);

// config.json's "quantization_config" as BitsAndBytesConfig(...).to_dict() writes it.
// skip_modules: llm_int8_skip_modules (null when empty).
nlohmann::json quantization_config(bool double_quant, DType compute_dtype,
                                   const std::vector<std::string>& skip_modules);

}  // namespace llamaq::nf4
