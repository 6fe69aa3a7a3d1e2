#include "io/peft_adapter.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "io/text_file.h"

namespace llamaq {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kPrefix = "base_model.model.";

// peft's get_pattern_key: the first key k with re.match(rf"(.*\.)?({k})$", name).
template <typename T>
const T* pattern_value(const std::map<std::string, T>& patterns, const std::string& name) {
  for (const auto& [key, value] : patterns) {
    if (std::regex_match(name, std::regex("(.*\\.)?(" + key + ")"))) return &value;
  }
  return nullptr;
}

void reject_if(bool condition, std::string_view label, std::string_view what) {
  if (condition) fail("{}: {} is not supported", label, what);
}

void parse_targets(const json& cfg, LoraConfig& c, std::string_view label) {
  const auto it = cfg.find("target_modules");
  if (it == cfg.end() || it->is_null()) return;  // peft's default for llama: q_proj, v_proj
  if (it->is_string()) {
    if (it->get<std::string>() == "all-linear") {
      c.all_linear = true;
    } else {
      c.target_regex = it->get<std::string>();
    }
    return;
  }
  if (!it->is_array()) fail("{}: target_modules must be a list or a string", label);
  c.target_modules.clear();
  for (const json& t : *it) {
    if (!t.is_string()) fail("{}: target_modules must hold strings", label);
    c.target_modules.push_back(t.get<std::string>());
  }
}

Tensor to_f32(const Tensor& t, const std::string& name, const fs::path& file) {
  if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16) {
    fail("{}: tensor `{}` has dtype {}, expected F32, BF16 or F16", file.string(), name,
         dtype_name(t.dtype()));
  }
  Tensor out = Tensor::zeros(DType::F32, t.shape());
  float* o = out.data_as<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (t.dtype()) {
      case DType::F32: o[i] = t.data_as<const float>()[i]; break;
      case DType::BF16: o[i] = bf16_to_float(t.data_as<const uint16_t>()[i]); break;
      default: o[i] = fp16_to_float(t.data_as<const uint16_t>()[i]); break;
    }
  }
  return out;
}

}  // namespace

bool LoraConfig::targets(const std::string& module_name) const {
  if (layers_to_transform) {
    static const std::regex layer_index(R"(.*\.layers\.(\d+)\..*)");
    std::smatch m;
    if (!std::regex_match(module_name, m, layer_index)) return false;
    const int64_t index = std::stoll(m[1].str());
    if (std::find(layers_to_transform->begin(), layers_to_transform->end(), index) ==
        layers_to_transform->end()) {
      return false;
    }
  }
  if (all_linear) return !module_name.ends_with("lm_head");
  if (target_regex) return std::regex_match(module_name, std::regex(*target_regex));
  for (const std::string& t : target_modules) {
    if (module_name == t || module_name.ends_with("." + t)) return true;
  }
  return false;
}

int64_t LoraConfig::rank_for(const std::string& module_name) const {
  const int64_t* p = pattern_value(rank_pattern, module_name);
  return p ? *p : r;
}

double LoraConfig::scaling_for(const std::string& module_name) const {
  const double* a = pattern_value(alpha_pattern, module_name);
  const double alpha = a ? *a : lora_alpha;
  const double rank = double(rank_for(module_name));
  return use_rslora ? alpha / std::sqrt(rank) : alpha / rank;
}

LoraConfig parse_lora_config(std::string_view json_text, std::string_view label) {
  json cfg;
  try {
    cfg = json::parse(json_text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", label, e.what());
  }
  if (!cfg.is_object()) fail("{}: expected a JSON object", label);
  if (cfg.value("peft_type", std::string()) != "LORA") {
    fail("{}: peft_type {} is not supported (LORA adapters only)", label,
         cfg.contains("peft_type") ? cfg["peft_type"].dump() : "(missing)");
  }
  LoraConfig c;
  try {
    c.r = cfg.value("r", int64_t(8));
    c.lora_alpha = cfg.value("lora_alpha", 8.0);
    c.lora_dropout = cfg.value("lora_dropout", 0.0);
    c.use_rslora = cfg.value("use_rslora", false);
    reject_if(cfg.value("use_dora", false), label, "use_dora (DoRA)");
    reject_if(cfg.value("fan_in_fan_out", false), label, "fan_in_fan_out");
    reject_if(cfg.value("lora_bias", false), label, "lora_bias");
    reject_if(cfg.value("bias", std::string("none")) != "none", label, "bias other than \"none\"");
    reject_if(cfg.contains("modules_to_save") && !cfg["modules_to_save"].is_null() &&
                  !cfg["modules_to_save"].empty(),
              label, "modules_to_save");
    parse_targets(cfg, c, label);
    if (cfg.contains("rank_pattern") && cfg["rank_pattern"].is_object()) {
      c.rank_pattern = cfg["rank_pattern"].get<std::map<std::string, int64_t>>();
    }
    if (cfg.contains("alpha_pattern") && cfg["alpha_pattern"].is_object()) {
      c.alpha_pattern = cfg["alpha_pattern"].get<std::map<std::string, double>>();
    }
    if (cfg.contains("layers_to_transform") && !cfg["layers_to_transform"].is_null()) {
      const json& l = cfg["layers_to_transform"];
      c.layers_to_transform = l.is_array() ? l.get<std::vector<int64_t>>()
                                           : std::vector<int64_t>{l.get<int64_t>()};
    }
    if (cfg.contains("base_model_name_or_path") && cfg["base_model_name_or_path"].is_string()) {
      c.base_model_name_or_path = cfg["base_model_name_or_path"].get<std::string>();
    }
  } catch (const json::exception& e) {
    fail("{}: a field has the wrong type: {}", label, e.what());
  }
  if (c.r <= 0 || c.r > 65536) fail("{}: r = {} is out of range", label, c.r);
  if (!std::isfinite(c.lora_alpha)) fail("{}: lora_alpha must be a finite number", label);
  if (!(c.lora_dropout >= 0 && c.lora_dropout < 1)) fail("{}: lora_dropout must be in [0, 1)", label);
  try {
    if (c.target_regex) (void)std::regex(*c.target_regex);
    for (const auto& [k, v] : c.rank_pattern) (void)std::regex(k);
    for (const auto& [k, v] : c.alpha_pattern) (void)std::regex(k);
  } catch (const std::regex_error& e) {
    fail("{}: invalid regular expression: {}", label, e.what());
  }
  return c;
}

PeftAdapter load_peft_adapter(const fs::path& dir) {
  const fs::path config_path = dir / "adapter_config.json";
  const fs::path weights_path = dir / "adapter_model.safetensors";
  if (!fs::exists(config_path)) fail("{}: missing (not a PEFT adapter folder)", config_path.string());
  if (!fs::exists(weights_path)) {
    fail("{}: missing{}", weights_path.string(),
         fs::exists(dir / "adapter_model.bin") ? " (adapter_model.bin pickles are not read)" : "");
  }
  PeftAdapter adapter;
  adapter.dir = dir;
  adapter.config = parse_lora_config(read_text_file(config_path), config_path.string());
  const SafetensorsFile file = SafetensorsFile::open(weights_path);
  for (const SafetensorsEntry& e : file.entries()) {
    std::string name = e.name.starts_with(kPrefix) ? e.name.substr(kPrefix.size()) : e.name;
    const bool is_a = name.ends_with(".lora_A.weight");
    const bool is_b = name.ends_with(".lora_B.weight");
    if (!is_a && !is_b) fail("{}: unexpected tensor `{}` in a LoRA adapter", weights_path.string(), e.name);
    if (e.shape.size() != 2) fail("{}: tensor `{}` must be 2-D", weights_path.string(), e.name);
    const std::string module = name.substr(0, name.size() - std::strlen(".lora_A.weight"));
    LoraTensors& t = adapter.modules[module];
    (is_a ? t.a : t.b) = to_f32(file.tensor(e), e.name, weights_path);
  }
  for (const auto& [module, t] : adapter.modules) {
    if (t.a.empty() || t.b.empty()) {
      fail("{}: module `{}` has lora_{} but not lora_{}", weights_path.string(), module,
           t.a.empty() ? "B" : "A", t.a.empty() ? "A" : "B");
    }
    if (t.a.dim(0) != t.b.dim(1)) {
      fail("{}: module `{}`: lora_A {} and lora_B {} disagree on the rank", weights_path.string(),
           module, shape_to_string(t.a.shape()), shape_to_string(t.b.shape()));
    }
  }
  if (adapter.modules.empty()) fail("{}: no LoRA tensors", weights_path.string());
  return adapter;
}

void save_peft_adapter(const fs::path& dir, const LoraConfig& c,
                       const std::map<std::string, LoraTensors>& modules) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create folder: {}", dir.string(), ec.message());
  json targets = json::array();
  if (c.all_linear) {
    targets = "all-linear";
  } else if (c.target_regex) {
    targets = *c.target_regex;
  } else {
    for (const auto& t : c.target_modules) targets.push_back(t);
  }
  // peft 0.21's LoraConfig fields that older peft versions also know (specs §6.2).
  const json cfg = {
      {"alpha_pattern", c.alpha_pattern}, {"auto_mapping", nullptr},
      {"base_model_name_or_path", c.base_model_name_or_path.empty() ? json(nullptr) : json(c.base_model_name_or_path)},
      {"bias", "none"}, {"exclude_modules", nullptr}, {"fan_in_fan_out", false},
      {"inference_mode", true}, {"init_lora_weights", true}, {"layer_replication", nullptr},
      {"layers_pattern", nullptr},
      {"layers_to_transform", c.layers_to_transform ? json(*c.layers_to_transform) : json(nullptr)},
      {"loftq_config", json::object()}, {"lora_alpha", c.lora_alpha}, {"lora_bias", false},
      {"lora_dropout", c.lora_dropout}, {"megatron_config", nullptr},
      {"megatron_core", "megatron.core"}, {"modules_to_save", nullptr}, {"peft_type", "LORA"},
      {"r", c.r}, {"rank_pattern", c.rank_pattern}, {"revision", nullptr},
      {"target_modules", targets}, {"task_type", "CAUSAL_LM"}, {"use_dora", false},
      {"use_rslora", c.use_rslora}};
  std::vector<SafetensorsTensorData> tensors;
  for (const auto& [module, t] : modules) {
    for (const auto& [suffix, tensor] : {std::pair{".lora_A.weight", &t.a}, {".lora_B.weight", &t.b}}) {
      if (tensor->dtype() != DType::F32) fail("save_peft_adapter: `{}` must be f32", module);
      tensors.push_back({kPrefix + module + suffix, DType::F32, tensor->shape(),
                         {static_cast<const uint8_t*>(tensor->data()), size_t(tensor->nbytes())}});
    }
  }
  write_safetensors(dir / "adapter_model.safetensors", std::move(tensors));
  write_file_atomic(dir / "adapter_config.json", cfg.dump(2) + "\n");
}

}  // namespace llamaq
