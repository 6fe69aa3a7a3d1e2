// The JSON side of bitsandbytes 4-bit checkpoints (specs §2.3, §2.4): parsing and validating the
// `quant_state.bitsandbytes__<type>` blob, writing it byte for byte as Python's json.dumps does,
// and config.json's `quantization_config`.
#include <array>
#include <charconv>
#include <cmath>
#include <limits>
#include <optional>

#include "core/error.h"
#include "quant/bnb_tensors.h"

namespace llamaq::nf4 {
namespace {

using nlohmann::json;

// Real blobs are under 300 bytes; anything this large is not a quant_state.
constexpr size_t kMaxQuantStateBytes = 64 * 1024;
constexpr int64_t kMaxDimension = int64_t(1) << 40;

constexpr std::array<DType, 3> kTorchDtypes = {DType::BF16, DType::F16, DType::F32};

// str(torch.<dtype>).strip("torch."), as QuantState.as_dict writes "dtype".
std::string_view torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::BF16:
      return "bfloat16";
    case DType::F16:
      return "float16";
    case DType::F32:
      return "float32";
    default:
      fail("dtype {} has no bitsandbytes quant_state name", dtype_name(dtype));
  }
}

std::optional<DType> parse_torch_dtype(std::string_view name) {
  for (DType dtype : kTorchDtypes) {
    if (torch_dtype_name(dtype) == name) return dtype;
  }
  return std::nullopt;
}

std::string_view strip_trailing_padding(std::string_view text) {
  while (!text.empty() && (text.back() == '\0' || text.back() == ' ' || text.back() == '\n' ||
                           text.back() == '\r' || text.back() == '\t')) {
    text.remove_suffix(1);
  }
  return text;
}

json parse_object(std::string_view text, std::string_view label) {
  if (text.size() > kMaxQuantStateBytes) {
    fail("{}: quant_state JSON is {} bytes, more than the {} a quant_state can need", label,
         text.size(), kMaxQuantStateBytes);
  }
  json root;
  try {
    root = json::parse(strip_trailing_padding(text));
  } catch (const json::exception& e) {
    fail("{}: corrupt quant_state JSON ({})", label, e.what());
  }
  if (!root.is_object()) fail("{}: quant_state JSON is not an object", label);
  return root;
}

const json& require_key(const json& root, const char* key, std::string_view label) {
  const auto it = root.find(key);
  if (it == root.end()) fail("{}: quant_state JSON lacks \"{}\"", label, key);
  return *it;
}

std::string require_string(const json& root, const char* key, std::string_view label) {
  const json& value = require_key(root, key, label);
  if (!value.is_string()) fail("{}: quant_state \"{}\" is not a string", label, key);
  return value.get<std::string>();
}

int64_t require_block_size(const json& root, const char* key, std::string_view label) {
  const json& value = require_key(root, key, label);
  if (!value.is_number_integer() || !valid_block_size(value.get<int64_t>())) {
    fail("{}: quant_state \"{}\" {} is not a bitsandbytes block size (32, 64, ..., 4096)", label,
         key, value.dump());
  }
  return value.get<int64_t>();
}

QuantType parse_quant_type(const json& root, std::string_view label) {
  const std::string type = require_string(root, "quant_type", label);
  if (type == "nf4") return QuantType::Nf4;
  if (type == "fp4") return QuantType::Fp4;
  fail("{}: unknown quant_type \"{}\" (expected \"nf4\" or \"fp4\")", label, type);
}

DType parse_original_dtype(const json& root, std::string_view label) {
  const std::string name = require_string(root, "dtype", label);
  const auto dtype = parse_torch_dtype(name);
  if (!dtype)
    fail("{}: quant_state \"dtype\" \"{}\" is not bfloat16, float16 or float32", label, name);
  return *dtype;
}

Shape parse_shape(const json& root, std::string_view label) {
  const json& value = require_key(root, "shape", label);
  if (!value.is_array() || value.empty()) {
    fail("{}: quant_state \"shape\" {} is not a list of sizes", label, value.dump());
  }
  Shape shape;
  int64_t elements = 1;
  for (const json& dim : value) {
    if (!dim.is_number_integer() || dim.get<int64_t>() < 0 || dim.get<int64_t>() > kMaxDimension) {
      fail("{}: quant_state \"shape\" {} holds an invalid size", label, value.dump());
    }
    shape.push_back(dim.get<int64_t>());
    if (shape.back() != 0 && elements > kMaxDimension / shape.back()) {
      fail("{}: quant_state \"shape\" {} has too many elements", label, value.dump());
    }
    elements *= shape.back();
  }
  return shape;
}

// The three nested_* keys of double quantization: all present or none.
void parse_nested(const json& root, std::string_view label, QuantState& state) {
  const int present = int(root.contains("nested_blocksize")) + int(root.contains("nested_dtype")) +
                      int(root.contains("nested_offset"));
  if (present == 0) return;
  if (present != 3) {
    fail("{}: quant_state has only some of nested_blocksize, nested_dtype, nested_offset", label);
  }
  state.nested = true;
  state.nested_block_size = require_block_size(root, "nested_blocksize", label);
  const std::string nested_dtype = require_string(root, "nested_dtype", label);
  if (nested_dtype != "float32") {
    fail("{}: quant_state \"nested_dtype\" \"{}\" is not float32", label, nested_dtype);
  }
  const json& offset = root["nested_offset"];
  if (!offset.is_number() || !std::isfinite(offset.get<double>()) ||
      std::fabs(offset.get<double>()) > double(std::numeric_limits<float>::max())) {
    fail("{}: quant_state \"nested_offset\" {} is not a finite float32 number", label,
         offset.dump());
  }
  state.nested_offset = float(offset.get<double>());
}

// Python's repr of a value whose shortest round-trip digits are `digits` (no dot, no sign) and
// whose decimal exponent (scientific notation) is `exponent`. (Built by appending: GCC 12 warns
// falsely about string operator+ chains under -Wrestrict.)
std::string format_python_digits(std::string_view digits, int exponent) {
  std::string out;
  if (exponent < -4 || exponent >= 16) {
    out.append(digits.substr(0, 1));
    if (digits.size() > 1) out.append(".").append(digits.substr(1));
    const int magnitude = std::abs(exponent);
    out.append(exponent < 0 ? "e-" : "e+");
    if (magnitude < 10) out.append("0");
    return out.append(std::to_string(magnitude));
  }
  if (exponent < 0) {
    out.append("0.").append(size_t(-exponent - 1), '0');
    return out.append(digits);
  }
  const size_t integer_digits = size_t(exponent) + 1;
  if (digits.size() <= integer_digits) {
    out.append(digits).append(integer_digits - digits.size(), '0');
    return out.append(".0");
  }
  out.append(digits.substr(0, integer_digits)).append(".");
  return out.append(digits.substr(integer_digits));
}

}  // namespace

QuantState parse_quant_state(std::string_view text, std::string_view label) {
  const json root = parse_object(text, label);
  QuantState state;
  state.quant_type = parse_quant_type(root, label);
  state.block_size = require_block_size(root, "blocksize", label);
  state.dtype = parse_original_dtype(root, label);
  state.shape = parse_shape(root, label);
  parse_nested(root, label, state);
  return state;
}

std::string python_float_repr(double value) {
  if (std::isnan(value)) return "NaN";  // json.dumps' spellings of the non-finite values
  if (std::isinf(value)) return value < 0 ? "-Infinity" : "Infinity";
  std::array<char, 64> buffer{};
  const auto result = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value,
                                    std::chars_format::scientific);
  const std::string_view text(buffer.data(), size_t(result.ptr - buffer.data()));
  const size_t e = text.find('e');
  const bool negative = text.front() == '-';
  std::string digits;
  for (char c : text.substr(negative ? 1 : 0, e - (negative ? 1 : 0))) {
    if (c != '.') digits += c;
  }
  const int exponent = std::stoi(std::string(text.substr(e + 1)));
  std::string out = negative ? "-" : "";
  return out.append(format_python_digits(digits, exponent));
}

std::string quant_state_json(const Nf4Weight& w) {
  if (!valid_block_size(w.block_size))
    fail("quant_state_json: invalid block size {}", w.block_size);
  std::string out =
      fmt::format(R"({{"quant_type": "{}", "blocksize": {}, "dtype": "{}", "shape": [{}, {}])",
                  quant_type_name(w.quant_type), w.block_size, torch_dtype_name(w.original_dtype),
                  w.rows, w.cols);
  if (w.double_quant) {
    if (!std::isfinite(w.nested_offset)) fail("quant_state_json: nested_offset is not finite");
    out +=
        fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {})",
                    w.nested_block_size, python_float_repr(double(w.nested_offset)));
  }
  return out + "}";
}

nlohmann::json quantization_config(bool double_quant, DType compute_dtype,
                                   const std::vector<std::string>& skip_modules) {
  json config = json::object();  // std::map-backed: keys come out sorted, as config.json has them
  config["_load_in_4bit"] = true;
  config["_load_in_8bit"] = false;
  config["bnb_4bit_compute_dtype"] = torch_dtype_name(compute_dtype);
  config["bnb_4bit_quant_storage"] = "uint8";
  config["bnb_4bit_quant_type"] = "nf4";
  config["bnb_4bit_use_double_quant"] = double_quant;
  config["llm_int8_enable_fp32_cpu_offload"] = false;
  config["llm_int8_has_fp16_weight"] = false;
  config["llm_int8_skip_modules"] = skip_modules.empty() ? json(nullptr) : json(skip_modules);
  config["llm_int8_threshold"] = 6.0;
  config["load_in_4bit"] = true;
  config["load_in_8bit"] = false;
  config["quant_method"] = "bitsandbytes";
  return config;
}

}  // namespace llamaq::nf4
