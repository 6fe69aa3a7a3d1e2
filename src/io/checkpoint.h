// A Hugging Face checkpoint folder's tensors: `model.safetensors`, or shards listed by
// `model.safetensors.index.json` (specs §3.5). Every shard is opened and validated up front.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "io/safetensors.h"

namespace llamaq {

class CheckpointTensors {
 public:
  // Opens the weights of the checkpoint folder `dir`; throws naming the missing or bad file.
  static CheckpointTensors open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  bool sharded() const { return sharded_; }
  const std::vector<SafetensorsFile>& files() const { return files_; }

  struct Located {
    const SafetensorsFile* file;
    const SafetensorsEntry* entry;
  };
  // nullptr entry when absent.
  Located find(std::string_view name) const;
  // Where a tensor is expected (its shard per the index, else the single file): for messages.
  std::string expected_file(std::string_view name) const;
  std::vector<std::string> names() const;  // every tensor, in name order
  int64_t total_bytes() const;

 private:
  std::filesystem::path dir_;
  bool sharded_ = false;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, Located, std::less<>> tensors_;
  std::map<std::string, std::string, std::less<>> weight_map_;
};

}  // namespace llamaq
