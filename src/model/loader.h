// Loading a Hugging Face Llama checkpoint folder: config.json, generation_config.json (optional),
// the safetensors weights (single file or sharded), bound by name and uploaded to a backend.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "io/checkpoint.h"
#include "model/config.h"
#include "model/llama_model.h"

namespace llamaq {

struct LoadedModel {
  std::filesystem::path dir;
  LlamaConfig config;
  GenerationConfig generation;
  int64_t weight_bytes = 0;  // bytes of tensor data in the checkpoint
  std::unique_ptr<LlamaModel> model;

  // The ids that end generation: config eos ids, then generation_config eos ids (deduplicated).
  std::vector<int32_t> eos_token_ids() const;
};

// `log` receives one-line progress messages (may be empty).
LoadedModel load_model(const std::filesystem::path& dir, Backend& backend,
                       const std::function<void(const std::string&)>& log = {});

}  // namespace llamaq
