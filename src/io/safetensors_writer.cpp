#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace llamaq {
namespace {

std::string json_string(const std::string& text) { return nlohmann::json(text).dump(); }

void check_tensor(const SafetensorsTensorData& t) {
  uint64_t elements = 1;
  for (int64_t d : t.shape) {
    if (d < 0) fail("safetensors writer: tensor `{}` has a negative dimension", t.name);
    elements *= uint64_t(d);
  }
  const uint64_t bits = elements * uint64_t(dtype_bits(t.dtype));
  if (bits % 8 != 0 || bits / 8 != t.bytes.size()) {
    fail("safetensors writer: tensor `{}` ({} {}) needs {} bits but {} bytes were given", t.name,
         dtype_name(t.dtype), shape_to_string(t.shape), bits, t.bytes.size());
  }
}

}  // namespace

std::string serialize_safetensors_header(std::vector<SafetensorsTensorData>& tensors,
                                         const std::map<std::string, std::string>& metadata) {
  std::set<std::string> names;
  for (const auto& t : tensors) {
    check_tensor(t);
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      fail("safetensors writer: tensor name `{}` is reserved or used twice", t.name);
    }
  }
  // Descending dtype (largest alignment first), then name: the reference writer's order.
  std::stable_sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) {
    if (a.dtype != b.dtype) return a.dtype > b.dtype;
    return a.name < b.name;
  });
  std::string json = "{";
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) json += ',';
      first = false;
      json += fmt::format("{}:{}", json_string(key), json_string(value));
    }
    json += "}";
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (json.size() > 1) json += ',';
    std::string dims;
    for (size_t i = 0; i < t.shape.size(); ++i) dims += fmt::format("{}{}", i ? "," : "", t.shape[i]);
    const uint64_t end = offset + t.bytes.size();
    json += fmt::format("{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                        json_string(t.name), dtype_name(t.dtype), dims, offset, end);
    offset = end;
  }
  json += "}";
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i, n >>= 8) out[i] = char(n & 0xff);
  return out + json;
}

void write_safetensors(const std::filesystem::path& path,
                       std::vector<SafetensorsTensorData> tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string header = serialize_safetensors_header(tensors, metadata);
  AtomicFileWriter writer(path);
  writer.write(header);
  for (const auto& t : tensors) writer.write(t.bytes);
  writer.commit();
}

}  // namespace llamaq
