#include "cli_common.h"

#include <charconv>
#include <iostream>
#include <random>
#include <sstream>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#ifdef LLAMAQ_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif
#include "core/resources.h"
#include "model/random_checkpoint.h"
#include "runtime/profiler.h"

namespace llamaq::cli {

void add_model_options(CLI::App& command, ModelOptions& options) {
  command.add_option("-m,--model", options.model_dir, "Hugging Face checkpoint folder")->required();
  command.add_option("-t,--threads", options.threads, "CPU threads (0 = all)")
      ->check(CLI::NonNegativeNumber);
  command
      .add_option("--quant", options.quant,
                  "Quantize the projections to 4-bit while loading: none or nf4 (a 4-bit "
                  "checkpoint is used as it is)")
      ->check(CLI::IsMember({"none", "nf4"}));
  command.add_flag("--quant-lm-head", options.quant_lm_head, "With --quant nf4, the LM head too");
  command.add_flag("--no-double-quant", options.no_double_quant,
                   "With --quant nf4, keep the block scales in float32");
  command.add_option("--lora", options.lora_dir, "A PEFT LoRA adapter folder to apply");
  command.add_option("--device", options.device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  command.add_flag("--no-graphs", options.no_graphs,
                   "On the GPU, launch each op of a decode step instead of replaying a CUDA graph");
  add_kv_dtype_option(command, options.kv_dtype);
  add_no_mmap_option(command, options.no_mmap);
}

void add_no_mmap_option(CLI::App& command, bool& no_mmap) {
  command.add_flag("--no-mmap", no_mmap,
                   "Read the weights into memory instead of using them from the mapped checkpoint "
                   "(slower start, no sharing between processes; faster CPU decode where reading "
                   "through the mapping is slow)");
}

void add_kv_dtype_option(CLI::App& command, std::string& kv_dtype) {
  command
      .add_option("--kv-dtype", kv_dtype,
                  "KV cache: bf16 (default on the GPU and the CPU fast path), f16 or q8 (CPU "
                  "only; q8: int8 with a scale per 32 values) or f32 (default on the CPU "
                  "reference path)")
      ->check(CLI::IsMember({"f32", "bf16", "f16", "q8"}));
}

namespace {

std::optional<DType> kv_dtype_of(const ModelOptions& options) {
  if (options.kv_dtype.empty()) return std::nullopt;
  if (options.kv_dtype == "f32") return DType::F32;
  if (options.kv_dtype == "q8") return DType::I8;
  return options.kv_dtype == "f16" ? DType::F16 : DType::BF16;
}

}  // namespace

std::unique_ptr<Backend> make_backend(const ModelOptions& options) {
  if (options.device == "cuda" && (options.kv_dtype == "f16" || options.kv_dtype == "q8")) {
    fail("--kv-dtype {}: the CUDA backend keeps its KV cache in bf16 or f32", options.kv_dtype);
  }
  if (options.attention != "flash" && options.attention != "naive") {
    fail("--attn: unknown attention \"{}\" (flash or naive)", options.attention);
  }
  if (options.device == "cuda") {
#ifdef LLAMAQ_HAVE_CUDA
    cuda::CudaBackendOptions cuda_options;
    cuda_options.attention =
        options.attention == "naive" ? cuda::AttentionImpl::Naive : cuda::AttentionImpl::Flash;
    if (options.kv_dtype == "f32") cuda_options.kv_dtype = DType::F32;
    return make_cuda_backend(0, cuda_options);
#else
    fail("--device cuda: this build has no CUDA backend (nvcc was not found when it was built)");
#endif
  }
  if (options.attention == "naive") fail("--attn naive is a GPU comparison (--device cuda)");
  return make_cpu_backend(options.threads, cpu::best_isa(), kv_dtype_of(options));
}

std::unique_ptr<Backend> make_training_backend(const ModelOptions& options) {
  if (options.device == "cpu") {
    return make_cpu_backend(options.threads, cpu::Isa::Reference, kv_dtype_of(options));
  }
  return make_backend(options);
}

LoadOptions load_options(const ModelOptions& options) {
  LoadOptions load;
  load.quantize_nf4 = options.quant == "nf4";
  load.quantize_lm_head = options.quant_lm_head;
  load.double_quant = !options.no_double_quant;
  load.threads = options.threads;
  load.progress = true;
  load.lora_dir = options.lora_dir;
  load.no_mmap = options.no_mmap;
  return load;
}

void add_profile_option(CLI::App& command, std::string& path) {
  command.add_option("--profile", path,
                     "Write per-op device times as a Chrome trace (open in Perfetto) and print the "
                     "top ops (CUDA graphs are off while profiling)");
}

void load_bench_weights(const std::string& preset, const std::string& model_dir, int threads,
                        BenchWeights& out) {
  if (!preset.empty()) {
    out.config = parse_llama_config(preset_config(preset).dump(), preset);
    log_line("making random " + preset + " weights in memory");
    out.weights = random_weights(out.config, 1, threads);
    return;
  }
  out.config = load_llama_config(std::filesystem::path(model_dir) / "config.json");
  out.checkpoint.emplace(CheckpointTensors::open(model_dir));
  out.weights = bind_llama_weights(out.config, *out.checkpoint);
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) items.push_back(item);
  }
  return items;
}

std::unique_ptr<Backend> make_profiled_backend(const ModelOptions& options) {
  std::unique_ptr<Backend> backend = make_backend(options);
  if (options.profile_path.empty()) return backend;
  return std::make_unique<ProfilingBackend>(std::move(backend));
}

void finish_profile(Backend& backend, const std::string& path) {
  auto* profiler = dynamic_cast<ProfilingBackend*>(&backend);
  if (!profiler || path.empty()) return;
  profiler->write_chrome_trace(path);
  std::cerr << profiler->summary_table() << "trace written to " << path << std::endl;
}

Engine load_engine(const ModelOptions& options) {
  Engine engine;
  engine.backend = make_profiled_backend(options);
  engine.loaded = load_model(options.model_dir, *engine.backend, log_line, load_options(options));
  engine.loaded.model->set_graphs_enabled(!options.no_graphs);
  return engine;
}

Tokenizer load_tokenizer(const std::string& model_dir) {
  return Tokenizer::from_model_dir(model_dir);
}

std::string rate_text(int64_t tokens, double seconds) {
  return fmt::format("{} tokens in {:.3f} s ({:.1f} tokens/s)", tokens, seconds,
                     seconds > 0 ? double(tokens) / seconds : 0.0);
}

namespace {

const char* reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::StopToken:
      return "stop token";
    case StopReason::MaxTokens:
      return "max tokens";
    case StopReason::Cancelled:
      return "cancelled";
  }
  return "?";
}

}  // namespace

void print_generation_summary(const GenerateResult& r, const SamplingParams& sampling) {
  // The first generated token comes from the prompt's logits; each later one costs a step.
  const int64_t steps = std::max<int64_t>(1, int64_t(r.tokens.size()) + (r.stop_token ? 1 : 0)) - 1;
  log_line("prompt: " + rate_text(r.prompt_tokens, r.prompt_seconds));
  log_line(fmt::format(
      "generated: {} tokens, {} decode steps in {:.3f} s ({:.1f} tokens/s), "
      "stopped by {}",
      r.tokens.size(), steps, r.generate_seconds,
      r.generate_seconds > 0 ? double(steps) / r.generate_seconds : 0.0, reason_name(r.reason)));
  log_line(fmt::format("sampling: temperature {}, top-k {}, top-p {}, min-p {}, seed {}",
                       sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p,
                       sampling.seed));
  log_line(fmt::format("peak memory: {:.1f} MiB", double(peak_resident_bytes()) / (1 << 20)));
}

std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& flag) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = text.find_first_of(", \t\n", pos);
    const std::string item =
        text.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    pos = end == std::string::npos ? text.size() : end + 1;
    if (item.empty()) continue;
    int32_t id = 0;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (ec != std::errc() || ptr != item.data() + item.size() || id < 0) {
      fail("{}: \"{}\" is not a token id (expected non-negative integers separated by commas)",
           flag, item);
    }
    ids.push_back(id);
  }
  if (ids.empty()) fail("{}: no token ids given", flag);
  return ids;
}

void add_sampling_options(CLI::App& command, SamplingOptions& o) {
  command.add_option("--temp,--temperature", o.temperature, "Sampling temperature (0 = greedy)");
  command.add_option("--top-k", o.top_k, "Keep the k most likely tokens (0 = off)");
  command.add_option("--top-p", o.top_p, "Nucleus sampling mass (1 = off)");
  command.add_option("--min-p", o.min_p, "Drop tokens below min-p x the top probability (0 = off)");
  command.add_option("--repeat-penalty", o.repeat_penalty, "Repetition penalty (1 = off)");
  command.add_option("--repeat-last-n", o.repeat_last_n,
                     "Tokens of history the penalty looks at (0 = all)");
  command.add_option("-s,--seed", o.seed, "Random seed (default: random, printed at the end)");
}

SamplingParams resolve_sampling(const SamplingOptions& o, const GenerationConfig& g) {
  SamplingParams p;
  const bool sample_by_default = g.do_sample.value_or(false);
  p.temperature =
      o.temperature.value_or(sample_by_default ? float(g.temperature.value_or(1.0)) : 0.0f);
  p.top_k = o.top_k.value_or(sample_by_default ? int32_t(g.top_k.value_or(0)) : 0);
  p.top_p = o.top_p.value_or(sample_by_default ? float(g.top_p.value_or(1.0)) : 1.0f);
  p.min_p = o.min_p;
  p.repetition_penalty = o.repeat_penalty.value_or(float(g.repetition_penalty.value_or(1.0)));
  p.repeat_last_n = o.repeat_last_n;
  p.seed = o.seed ? *o.seed : std::random_device{}();
  validate(p);
  return p;
}

void log_line(const std::string& line) {
  std::cerr << line << std::endl;
}

}  // namespace llamaq::cli
