// PEFT LoRA adapters (specs §6): `adapter_config.json` + `adapter_model.safetensors` exactly as
// peft's save_pretrained writes them, read and written. Tensors are kept in f32.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace llamaq {

struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  bool use_rslora = false;
  // target_modules: a list of names (matched as the whole name or its last dotted parts), a
  // single regex (full match), or "all-linear" (every projection, never lm_head).
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  std::optional<std::string> target_regex;
  bool all_linear = false;
  std::map<std::string, int64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  std::optional<std::vector<int64_t>> layers_to_transform;
  std::string base_model_name_or_path;

  // Whether the module (e.g. "model.layers.0.self_attn.q_proj") carries an adapter.
  bool targets(const std::string& module_name) const;
  int64_t rank_for(const std::string& module_name) const;
  double scaling_for(const std::string& module_name) const;  // alpha / r, or alpha / sqrt(r)
};

struct LoraTensors {
  Tensor a;  // [r, in_features] f32
  Tensor b;  // [out_features, r] f32
};

struct PeftAdapter {
  std::filesystem::path dir;
  LoraConfig config;
  std::map<std::string, LoraTensors> modules;  // by module name, "model.layers.0.mlp.up_proj"
};

// Parses adapter_config.json text; `label` starts every error message.
LoraConfig parse_lora_config(std::string_view json_text, std::string_view label);

// Reads a PEFT adapter folder. Unsupported features (DoRA, biases, modules_to_save,
// fan_in_fan_out) and malformed files are errors naming the file and the field or tensor.
PeftAdapter load_peft_adapter(const std::filesystem::path& dir);

// Writes adapter_config.json (peft 0.21's keys, sorted, indent 2) and adapter_model.safetensors
// (f32, "base_model.model.<module>.lora_A/B.weight"), each atomically.
void save_peft_adapter(const std::filesystem::path& dir, const LoraConfig& config,
                       const std::map<std::string, LoraTensors>& modules);

}  // namespace llamaq
