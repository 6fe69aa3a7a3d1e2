#include "io/checkpoint.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/text_file.h"

namespace llamaq {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json read_index(const fs::path& path) {
  const std::string text = read_text_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", path.string(), e.what());
  }
}

// A shard name from the index must be a plain file name inside the folder.
void check_shard_name(const std::string& name, const fs::path& index_path) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    fail("{}: shard name \"{}\" is not a file name in the checkpoint folder", index_path.string(),
         name);
  }
}

}  // namespace

CheckpointTensors CheckpointTensors::open(const fs::path& dir) {
  if (!fs::is_directory(dir)) fail("{}: not a checkpoint folder (no such directory)", dir.string());
  CheckpointTensors ckpt;
  ckpt.dir_ = dir;
  const fs::path index_path = dir / "model.safetensors.index.json";
  const fs::path single_path = dir / "model.safetensors";
  std::vector<std::string> shard_names;
  if (fs::exists(index_path)) {
    ckpt.sharded_ = true;
    const json index = read_index(index_path);
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      fail("{}: missing \"weight_map\" object", index_path.string());
    }
    std::set<std::string> unique;
    for (const auto& [tensor, shard] : index["weight_map"].items()) {
      if (!shard.is_string()) fail("{}: weight_map[\"{}\"] is not a string", index_path.string(), tensor);
      check_shard_name(shard.get<std::string>(), index_path);
      ckpt.weight_map_[tensor] = shard.get<std::string>();
      if (unique.insert(shard.get<std::string>()).second) shard_names.push_back(shard.get<std::string>());
    }
    for (const auto& shard : shard_names) {
      if (!fs::exists(dir / shard)) {
        fail("{}: shard {} listed in {} is missing", (dir / shard).string(), shard,
             index_path.filename().string());
      }
    }
  } else if (fs::exists(single_path)) {
    shard_names.push_back("model.safetensors");
  } else {
    fail("{}: no model.safetensors or model.safetensors.index.json", dir.string());
  }
  ckpt.files_.reserve(shard_names.size());
  for (const auto& shard : shard_names) ckpt.files_.push_back(SafetensorsFile::open(dir / shard));

  for (const SafetensorsFile& file : ckpt.files_) {
    for (const SafetensorsEntry& entry : file.entries()) {
      const auto [it, inserted] = ckpt.tensors_.emplace(entry.name, Located{&file, &entry});
      if (!inserted) {
        fail("{}: tensor `{}` is also in {}", file.path().string(), entry.name,
             it->second.file->path().string());
      }
    }
  }
  for (const auto& [tensor, shard] : ckpt.weight_map_) {
    const auto it = ckpt.tensors_.find(tensor);
    if (it == ckpt.tensors_.end() || it->second.file->path().filename() != shard) {
      fail("{}: tensor `{}` listed in {} is not in that shard", (dir / shard).string(), tensor,
           index_path.filename().string());
    }
  }
  return ckpt;
}

CheckpointTensors::Located CheckpointTensors::find(std::string_view name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? Located{nullptr, nullptr} : it->second;
}

std::string CheckpointTensors::expected_file(std::string_view name) const {
  if (const auto it = weight_map_.find(name); it != weight_map_.end()) {
    return (dir_ / it->second).string();
  }
  if (sharded_) return (dir_ / "model.safetensors.index.json").string();
  return (dir_ / "model.safetensors").string();
}

std::vector<std::string> CheckpointTensors::names() const {
  std::vector<std::string> out;
  for (const auto& [name, located] : tensors_) out.push_back(name);
  return out;
}

int64_t CheckpointTensors::total_bytes() const {
  int64_t total = 0;
  for (const auto& [name, located] : tensors_) {
    total += int64_t(located.entry->end - located.entry->begin);
  }
  return total;
}

}  // namespace llamaq
