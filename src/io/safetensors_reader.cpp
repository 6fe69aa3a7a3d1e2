#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <set>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/utf8.h"

namespace llamaq {
namespace {

using nlohmann::json;

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | p[i];
  return value;
}

// Parses the JSON header, failing on a duplicate top-level key (nlohmann would keep the last).
json parse_header_json(std::string_view text, std::string_view label) {
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text.begin(), text.end(), on_event);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON in safetensors header: {}", label, e.what());
  }
  if (!duplicate.empty()) fail("{}: safetensors header names tensor `{}` twice", label, duplicate);
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", label);
  return header;
}

uint64_t unsigned_field(const json& value, std::string_view label, const std::string& name,
                        std::string_view what) {
  if (!value.is_number_unsigned()) {
    fail("{}: tensor `{}`: {} must be a non-negative integer, got {}", label, name, what,
         value.dump());
  }
  return value.get<uint64_t>();
}

SafetensorsEntry parse_entry(const std::string& name, const json& value, std::string_view label) {
  if (!value.is_object()) fail("{}: tensor `{}`: entry is not a JSON object", label, name);
  SafetensorsEntry entry;
  entry.name = name;
  const auto dtype_it = value.find("dtype");
  const auto shape_it = value.find("shape");
  const auto offsets_it = value.find("data_offsets");
  if (dtype_it == value.end() || shape_it == value.end() || offsets_it == value.end()) {
    fail("{}: tensor `{}`: missing field (dtype, shape and data_offsets are required)", label,
         name);
  }
  if (!dtype_it->is_string()) fail("{}: tensor `{}`: dtype must be a string", label, name);
  const auto dtype = parse_dtype(dtype_it->get_ref<const std::string&>());
  if (!dtype) fail("{}: tensor `{}`: unknown dtype {}", label, name, dtype_it->dump());
  entry.dtype = *dtype;
  if (!shape_it->is_array()) fail("{}: tensor `{}`: shape must be an array", label, name);
  for (const json& dim : *shape_it) {
    const uint64_t d = unsigned_field(dim, label, name, "every shape entry");
    if (d > uint64_t(INT64_MAX)) fail("{}: tensor `{}`: shape entry too large", label, name);
    entry.shape.push_back(int64_t(d));
  }
  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    fail("{}: tensor `{}`: data_offsets must be an array of two integers", label, name);
  }
  entry.begin = unsigned_field((*offsets_it)[0], label, name, "data_offsets[0]");
  entry.end = unsigned_field((*offsets_it)[1], label, name, "data_offsets[1]");
  return entry;
}

std::map<std::string, std::string> parse_metadata(const json& value, std::string_view label) {
  if (!value.is_object()) fail("{}: __metadata__ must be an object of strings", label);
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      fail("{}: __metadata__ value for `{}` must be a string, got {}", label, key, item.dump());
    }
    metadata[key] = item.get<std::string>();
  }
  return metadata;
}

// specs §3.3 rule 6: contiguous from 0, no overlap, size = dtype x shape, no overflow.
void validate_offsets(const std::vector<SafetensorsEntry>& tensors, std::string_view label) {
  uint64_t start = 0;
  for (const SafetensorsEntry& t : tensors) {
    if (t.begin != start || t.end < t.begin) {
      fail("{}: invalid offset for tensor `{}`: [{}, {}] (expected to start at {}; holes and "
           "overlaps are not allowed)",
           label, t.name, t.begin, t.end, start);
    }
    start = t.end;
    uint64_t elements = 1;
    for (int64_t d : t.shape) {
      if (__builtin_mul_overflow(elements, uint64_t(d), &elements)) {
        fail("{}: tensor `{}`: element count of shape {} overflows", label, t.name,
             shape_to_string(t.shape));
      }
    }
    uint64_t bits = 0;
    if (__builtin_mul_overflow(elements, uint64_t(dtype_bits(t.dtype)), &bits)) {
      fail("{}: tensor `{}`: byte size of shape {} overflows", label, t.name,
           shape_to_string(t.shape));
    }
    if (bits % 8 != 0) {
      fail("{}: tensor `{}`: {} x {} is not a whole number of bytes", label, t.name,
           dtype_name(t.dtype), shape_to_string(t.shape));
    }
    if (t.end - t.begin != bits / 8) {
      fail("{}: tensor `{}`: {} {} needs {} bytes but data_offsets [{}, {}] span {}", label, t.name,
           dtype_name(t.dtype), shape_to_string(t.shape), bits / 8, t.begin, t.end,
           t.end - t.begin);
    }
  }
}

}  // namespace

SafetensorsHeader parse_safetensors(std::span<const uint8_t> file, std::string_view label) {
  if (file.size() < 8) {
    fail("{}: not a safetensors file: {} bytes, too small for the 8-byte header length", label,
         file.size());
  }
  const uint64_t header_len = read_u64_le(file.data());
  if (header_len > kSafetensorsMaxHeaderBytes) {
    fail("{}: safetensors header length {} exceeds the {}-byte limit (corrupt or not a "
         "safetensors file)",
         label, header_len, kSafetensorsMaxHeaderBytes);
  }
  if (8 + header_len > file.size()) {
    fail("{}: safetensors header length {} runs past the end of the {}-byte file (truncated?)",
         label, header_len, file.size());
  }
  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), header_len);
  if (!is_valid_utf8(text)) fail("{}: safetensors header is not valid UTF-8", label);
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos || text[first] != '{') {
    fail("{}: safetensors header does not start with '{{'", label);
  }
  const json header_json = parse_header_json(text, label);

  SafetensorsHeader header;
  header.data_start = 8 + header_len;
  for (const auto& [name, value] : header_json.items()) {
    if (name == "__metadata__") {
      header.metadata = parse_metadata(value, label);
    } else {
      header.tensors.push_back(parse_entry(name, value, label));
    }
  }
  std::sort(header.tensors.begin(), header.tensors.end(), [](const auto& a, const auto& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  validate_offsets(header.tensors, label);
  const uint64_t data_len = header.tensors.empty() ? 0 : header.tensors.back().end;
  if (header.data_start + data_len != file.size()) {
    fail("{}: safetensors data is {} bytes but the file holds {} after the header (truncated or "
         "trailing bytes)",
         label, data_len, file.size() - header.data_start);
  }
  return header;
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile result;
  result.file_ = MappedFile::open(path);
  result.header_ = parse_safetensors(result.file_->bytes(), path.string());
  for (size_t i = 0; i < result.header_.tensors.size(); ++i) {
    result.index_.emplace(result.header_.tensors[i].name, i);
  }
  return result;
}

const SafetensorsEntry* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

Tensor SafetensorsFile::tensor(const SafetensorsEntry& entry) const {
  const uint8_t* bytes = file_->bytes().data() + header_.data_start + entry.begin;
  const size_t size = entry.end - entry.begin;
  const bool sub_byte = dtype_bits(entry.dtype) % 8 != 0;
  const DType dtype = sub_byte ? DType::U8 : entry.dtype;
  const Shape shape = sub_byte ? Shape{int64_t(size)} : entry.shape;
  const size_t align = size_t(dtype_size(dtype));
  if (reinterpret_cast<uintptr_t>(bytes) % align == 0) {
    return Tensor(const_cast<uint8_t*>(bytes), dtype, shape, Device::Cpu, file_);
  }
  Tensor copy = Tensor::zeros(dtype, shape);
  std::memcpy(copy.data(), bytes, size);
  return copy;
}

Tensor SafetensorsFile::tensor(std::string_view name) const {
  const SafetensorsEntry* entry = find(name);
  if (!entry) fail("{}: no tensor named `{}`", path().string(), name);
  return tensor(*entry);
}

}  // namespace llamaq
