// safetensors reader and writer (specs §3). The reader validates exactly what the reference
// implementation validates (header size cap, well-formed JSON, contiguous non-overlapping
// offsets covering the whole buffer, byte size = dtype x shape, no integer overflow), and also
// rejects duplicate names and a header that does not start with '{'. Data stays memory-mapped.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "io/mapped_file.h"

namespace llamaq {

inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0;  // offsets relative to the start of the data buffer
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::map<std::string, std::string> metadata;
  std::vector<SafetensorsEntry> tensors;  // sorted by offset
  uint64_t data_start = 0;                // absolute file offset of the data buffer (8 + N)
};

// Parses and validates a whole safetensors file held in memory. `label` (usually the path)
// starts every error message. Throws llamaq::Error.
SafetensorsHeader parse_safetensors(std::span<const uint8_t> file, std::string_view label);

class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_->path(); }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<SafetensorsEntry>& entries() const { return header_.tensors; }
  const SafetensorsEntry* find(std::string_view name) const;

  // A host tensor over the mapped bytes (copied into an aligned buffer when the file places it
  // at an address not aligned for its element type). Sub-byte dtypes are returned as U8 bytes.
  Tensor tensor(const SafetensorsEntry& entry) const;
  Tensor tensor(std::string_view name) const;  // throws naming the file when absent

 private:
  std::shared_ptr<const MappedFile> file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;
};

// One tensor to write: the bytes must be exactly dtype x shape long.
struct SafetensorsTensorData {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::span<const uint8_t> bytes;
};

// The header exactly as the reference writer makes it: tensors ordered by descending dtype then
// name, compact JSON with __metadata__ first, padded with spaces to a multiple of 8 bytes.
// Returns the 8-byte length prefix + header; `ordered` receives the tensors in data order.
std::string serialize_safetensors_header(std::vector<SafetensorsTensorData>& tensors,
                                         const std::map<std::string, std::string>& metadata);

// Writes atomically (temp file + rename). Metadata defaults to {"format": "pt"} like PyTorch.
void write_safetensors(const std::filesystem::path& path,
                       std::vector<SafetensorsTensorData> tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace llamaq
