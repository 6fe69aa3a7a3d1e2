// Reading and writing the tensor group of one bitsandbytes 4-bit linear (specs §2.2, §2.5):
// `<w>`, `<w>.absmax`, `<w>.quant_map`, `<w>.nested_absmax`, `<w>.nested_quant_map` and
// `<w>.quant_state.bitsandbytes__nf4|fp4`. Every inconsistency is an Error naming file and tensor.
#include <cmath>
#include <cstring>
#include <optional>

#include "core/error.h"
#include "quant/bnb_tensors.h"

namespace llamaq::nf4 {
namespace {

constexpr const char* kStateKeyPrefix = ".quant_state.bitsandbytes__";
// A stored code book may differ from ours by float32 rounding of its computation; a wrong type
// or corrupted table differs by far more. Dequantization always uses the stored values.
constexpr float kCodeTableTolerance = 1e-6f;

std::string state_key(const std::string& weight_name, QuantType type) {
  return weight_name + kStateKeyPrefix + quant_type_name(type);
}

// One tensor of the group, with the file it lives in for messages.
struct Found {
  std::string name;
  std::string file;
  Tensor tensor;
  std::string where() const { return fmt::format("{}: tensor `{}`", file, name); }
};

std::optional<Found> find(const CheckpointTensors& checkpoint, const std::string& name) {
  const auto located = checkpoint.find(name);
  if (!located.entry) return std::nullopt;
  return Found{name, located.file->path().string(), located.file->tensor(*located.entry)};
}

Found require(const CheckpointTensors& checkpoint, const std::string& name,
              std::string_view purpose, std::vector<std::string>& used) {
  auto found = find(checkpoint, name);
  if (!found) {
    fail("{}: missing tensor `{}` ({} of a bitsandbytes 4-bit weight)",
         checkpoint.expected_file(name), name, purpose);
  }
  used.push_back(name);
  return std::move(*found);
}

void require_dtype(const Found& t, DType dtype, std::string_view why) {
  if (t.tensor.dtype() != dtype) {
    fail("{} has dtype {}, expected {} ({})", t.where(), dtype_name(t.tensor.dtype()),
         dtype_name(dtype), why);
  }
}

void require_numel(const Found& t, int64_t numel, std::string_view why) {
  if (t.tensor.numel() != numel) {
    fail("{} has shape {} ({} values), expected {} values ({})", t.where(),
         shape_to_string(t.tensor.shape()), t.tensor.numel(), numel, why);
  }
}

void require_finite(const Found& t) {
  const float* values = t.tensor.data_as<const float>();
  for (int64_t i = 0; i < t.tensor.numel(); ++i) {
    if (!std::isfinite(values[i])) fail("{}: value {} is {}", t.where(), i, values[i]);
  }
}

// The one quant_state blob of the weight; its key suffix names the quant type.
Found find_state_blob(const CheckpointTensors& checkpoint, const std::string& weight_name,
                      QuantType& key_type, std::vector<std::string>& used) {
  auto nf4 = find(checkpoint, state_key(weight_name, QuantType::Nf4));
  auto fp4 = find(checkpoint, state_key(weight_name, QuantType::Fp4));
  if (nf4 && fp4) {
    fail("{}: weight `{}` has both a bitsandbytes__nf4 and a bitsandbytes__fp4 quant_state",
         nf4->file, weight_name);
  }
  if (!nf4 && !fp4) {
    fail("{}: missing tensor `{}` (the quant_state of a bitsandbytes 4-bit weight)",
         checkpoint.expected_file(state_key(weight_name, QuantType::Nf4)),
         state_key(weight_name, QuantType::Nf4));
  }
  key_type = nf4 ? QuantType::Nf4 : QuantType::Fp4;
  Found blob = nf4 ? std::move(*nf4) : std::move(*fp4);
  used.push_back(blob.name);
  require_dtype(blob, DType::U8, "the quant_state is UTF-8 JSON bytes");
  return blob;
}

QuantState read_quant_state(const Found& blob, QuantType key_type, int64_t rows, int64_t cols) {
  const std::string_view text(blob.tensor.data_as<const char>(), size_t(blob.tensor.numel()));
  QuantState state = parse_quant_state(text, blob.where());
  if (state.quant_type != key_type) {
    fail("{}: quant_type \"{}\" does not match the key suffix bitsandbytes__{}", blob.where(),
         quant_type_name(state.quant_type), quant_type_name(key_type));
  }
  if (state.shape != Shape{rows, cols}) {
    fail("{}: quant_state shape {} does not match the expected weight shape {}", blob.where(),
         shape_to_string(state.shape), shape_to_string({rows, cols}));
  }
  return state;
}

// The packed nibbles, whatever quant_storage dtype they were saved as, seen as U8 bytes.
Tensor read_packed(const Found& weight, int64_t elements) {
  const int64_t bytes = weight.tensor.numel() * dtype_bits(weight.tensor.dtype()) / 8;
  if (dtype_bits(weight.tensor.dtype()) % 8 != 0 || bytes != packed_bytes(elements)) {
    fail("{} holds {} bytes ({} {}) of packed 4-bit codes, expected (n+1)/2 = {} for {} elements",
         weight.where(), bytes, dtype_name(weight.tensor.dtype()),
         shape_to_string(weight.tensor.shape()), packed_bytes(elements), elements);
  }
  return Tensor(weight.tensor.data(), DType::U8, {bytes}, Device::Cpu, weight.tensor.owner());
}

void read_code_table(const Found& quant_map, QuantType type, Nf4Weight& w) {
  require_dtype(quant_map, DType::F32, "the 4-bit code book");
  require_numel(quant_map, kCodes, "the 4-bit code book");
  const float* stored = quant_map.tensor.data_as<const float>();
  const float* expected = code_book(type);
  for (int c = 0; c < kCodes; ++c) {
    if (!(std::fabs(stored[c] - expected[c]) <= kCodeTableTolerance)) {
      fail("{}: entry {} is {}, but the {} code book has {}", quant_map.where(), c, stored[c],
           quant_type_name(type), expected[c]);
    }
    w.code_table[size_t(c)] = stored[c];
  }
}

void read_plain_absmax(const Found& absmax, Nf4Weight& w) {
  require_dtype(absmax, DType::F32, "absmax without double quantization");
  require_numel(absmax, w.blocks(), "one absmax per block of the weight");
  require_finite(absmax);
  w.absmax = absmax.tensor.reshaped({w.blocks()});
}

void read_nested_absmax(const CheckpointTensors& checkpoint, const std::string& weight_name,
                        const Found& absmax, Nf4Weight& w, std::vector<std::string>& used) {
  require_dtype(absmax, DType::U8, "absmax codes with double quantization");
  require_numel(absmax, w.blocks(), "one absmax code per block of the weight");
  w.absmax = absmax.tensor.reshaped({w.blocks()});
  const Found nested =
      require(checkpoint, weight_name + ".nested_absmax", "the nested absmax", used);
  const int64_t n_nested = block_count(w.blocks(), w.nested_block_size);
  require_dtype(nested, DType::F32, "the nested absmax");
  require_numel(nested, n_nested, "one nested absmax per nested block");
  require_finite(nested);
  w.nested_absmax = nested.tensor.reshaped({n_nested});
  const Found map =
      require(checkpoint, weight_name + ".nested_quant_map", "the nested code book", used);
  require_dtype(map, DType::F32, "the nested code book");
  require_numel(map, kNestedCodes, "the 8-bit dynamic map");
  require_finite(map);
  w.nested_map = map.tensor.reshaped({kNestedCodes});
}

void reject_stray_nested(const CheckpointTensors& checkpoint, const std::string& weight_name,
                         const Found& blob) {
  for (const char* suffix : {".nested_absmax", ".nested_quant_map"}) {
    if (checkpoint.find(weight_name + suffix).entry) {
      fail("{}: tensor `{}{}` exists but the quant_state has no nested_* keys", blob.file,
           weight_name, suffix);
    }
  }
}

void add_tensor(std::vector<SafetensorsTensorData>& out, std::string name, DType dtype, Shape shape,
                const void* data, int64_t bytes) {
  out.push_back({std::move(name),
                 dtype,
                 std::move(shape),
                 {static_cast<const uint8_t*>(data), size_t(bytes)}});
}

void check_writable(const std::string& weight_name, const Nf4Weight& w) {
  const auto host = [](const Tensor& t) { return t.device() == Device::Cpu; };
  bool ok = host(w.packed) && host(w.absmax) && w.packed.dtype() == DType::U8 &&
            w.packed.numel() == packed_bytes(w.elements()) && w.absmax.numel() == w.blocks() &&
            w.absmax.dtype() == (w.double_quant ? DType::U8 : DType::F32);
  if (w.double_quant) {
    ok = ok && host(w.nested_absmax) && host(w.nested_map) &&
         w.nested_absmax.dtype() == DType::F32 &&
         w.nested_absmax.numel() == block_count(w.blocks(), w.nested_block_size) &&
         w.nested_map.dtype() == DType::F32 && w.nested_map.numel() == kNestedCodes;
  }
  if (!ok) {
    fail("append_bnb_tensors: `{}` is not a host weight with consistent packed data and scales",
         weight_name);
  }
}

}  // namespace

bool is_bnb_quantized(const CheckpointTensors& checkpoint, const std::string& weight_name) {
  return checkpoint.find(state_key(weight_name, QuantType::Nf4)).entry != nullptr ||
         checkpoint.find(state_key(weight_name, QuantType::Fp4)).entry != nullptr;
}

Nf4Weight read_bnb_weight(const CheckpointTensors& checkpoint, const std::string& weight_name,
                          int64_t rows, int64_t cols, std::vector<std::string>& used) {
  if (rows <= 0 || cols <= 0) {
    fail("read_bnb_weight: `{}` expected shape [{}, {}] is empty", weight_name, rows, cols);
  }
  QuantType key_type = QuantType::Nf4;
  const Found blob = find_state_blob(checkpoint, weight_name, key_type, used);
  const QuantState state = read_quant_state(blob, key_type, rows, cols);
  Nf4Weight w;
  w.rows = rows;
  w.cols = cols;
  w.block_size = state.block_size;
  w.quant_type = state.quant_type;
  w.original_dtype = state.dtype;
  w.double_quant = state.nested;
  w.nested_block_size = state.nested_block_size;
  w.nested_offset = state.nested_offset;
  w.packed =
      read_packed(require(checkpoint, weight_name, "the packed 4-bit codes", used), w.elements());
  read_code_table(require(checkpoint, weight_name + ".quant_map", "the 4-bit code book", used),
                  w.quant_type, w);
  const Found absmax = require(checkpoint, weight_name + ".absmax", "the block scales", used);
  if (w.double_quant) {
    read_nested_absmax(checkpoint, weight_name, absmax, w, used);
  } else {
    reject_stray_nested(checkpoint, weight_name, blob);
    read_plain_absmax(absmax, w);
  }
  return w;
}

void append_bnb_tensors(const std::string& weight_name, const Nf4Weight& w,
                        std::vector<SafetensorsTensorData>& out, std::deque<std::string>& storage) {
  check_writable(weight_name, w);
  const std::string& json = storage.emplace_back(quant_state_json(w));
  add_tensor(out, weight_name, DType::U8, {packed_bytes(w.elements()), 1}, w.packed.data(),
             w.packed.nbytes());
  add_tensor(out, weight_name + ".absmax", w.absmax.dtype(), {w.blocks()}, w.absmax.data(),
             w.absmax.nbytes());
  add_tensor(out, weight_name + ".quant_map", DType::F32, {kCodes}, w.code_table.data(),
             kCodes * int64_t(sizeof(float)));
  if (w.double_quant) {
    add_tensor(out, weight_name + ".nested_absmax", DType::F32, {w.nested_absmax.numel()},
               w.nested_absmax.data(), w.nested_absmax.nbytes());
    add_tensor(out, weight_name + ".nested_quant_map", DType::F32, {kNestedCodes},
               w.nested_map.data(), w.nested_map.nbytes());
  }
  add_tensor(out, state_key(weight_name, w.quant_type), DType::U8, {int64_t(json.size())},
             json.data(), int64_t(json.size()));
}

}  // namespace llamaq::nf4
