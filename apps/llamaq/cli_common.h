// Pieces every llamaq subcommand shares: model/threads options, parsing token id lists,
// logging to stderr and the end-of-run summary.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/loader.h"
#include "runtime/generate.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace llamaq::cli {

struct ModelOptions {
  std::string model_dir;
  int threads = 0;             // 0 = all hardware threads
  std::string quant = "none";  // "none" or "nf4": quantize projections while loading
  bool quant_lm_head = false;
  bool no_double_quant = false;
  std::string lora_dir;             // PEFT adapter to apply
  std::string device = "cpu";       // cpu or cuda
  bool no_graphs = false;           // run decode steps op by op instead of replaying a CUDA graph
  std::string profile_path;         // per-op trace (Chrome trace JSON) written here when set
  std::string attention = "flash";  // GPU attention: flash, or naive (scores materialized)
  std::string kv_dtype;  // KV cache: f32, bf16, f16 or q8 (the last two CPU only); empty: default
  bool no_mmap = false;  // read the weights into memory instead of using the checkpoint mapping
};

// --kv-dtype f32|bf16|f16|q8 (the KV cache; f16 and q8 on the CPU only).
void add_kv_dtype_option(CLI::App& command, std::string& kv_dtype);

// The backend the options ask for; cuda needs a build with nvcc.
std::unique_ptr<Backend> make_backend(const ModelOptions& options);
// For training: on the CPU the fp32 reference path, whose forward is exactly what the backward
// differentiates (the fast path quantizes activations to int8 for NF4 weights).
std::unique_ptr<Backend> make_training_backend(const ModelOptions& options);

void add_model_options(CLI::App& command, ModelOptions& options);
// --no-mmap (ModelOptions::no_mmap).
void add_no_mmap_option(CLI::App& command, bool& no_mmap);
LoadOptions load_options(const ModelOptions& options);

// The weights `bench` measures: random ones of a preset's shape made in memory, or a checkpoint's
// (mapped; `checkpoint` keeps the files open).
struct BenchWeights {
  LlamaConfig config;
  LlamaWeights weights;
  std::optional<CheckpointTensors> checkpoint;
};
void load_bench_weights(const std::string& preset, const std::string& model_dir, int threads,
                        BenchWeights& out);

// The non-empty items of a comma-separated list ("flash,naive").
std::vector<std::string> split_list(const std::string& text);

// --profile FILE (generate, bench): per-op device times as a Chrome trace plus a summary table.
void add_profile_option(CLI::App& command, std::string& path);
// The options' backend, wrapped in a ProfilingBackend when a profile path is set.
std::unique_ptr<Backend> make_profiled_backend(const ModelOptions& options);
// Writes the trace of a ProfilingBackend and prints its summary table to stderr (no-op for any
// other backend).
void finish_profile(Backend& backend, const std::string& path);

// The backend and the loaded model, kept together so the backend outlives the model.
struct Engine {
  std::unique_ptr<Backend> backend;
  LoadedModel loaded;
};
Engine load_engine(const ModelOptions& options);

// The checkpoint's tokenizer (tokenizer.json + tokenizer_config.json in the model folder).
Tokenizer load_tokenizer(const std::string& model_dir);

// A one-line rate: "12 tokens in 0.500 s (24.0 tokens/s)".
std::string rate_text(int64_t tokens, double seconds);
// The end-of-run summary of a generation on stderr.
void print_generation_summary(const GenerateResult& result, const SamplingParams& sampling);

// "1,2,3" or "1 2 3" -> ids; throws llamaq::Error naming the bad item.
std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& flag);

struct SamplingOptions {
  std::optional<float> temperature;
  std::optional<int32_t> top_k;
  std::optional<float> top_p;
  float min_p = 0.0f;
  std::optional<float> repeat_penalty;
  int32_t repeat_last_n = 64;
  std::optional<uint64_t> seed;
};
void add_sampling_options(CLI::App& command, SamplingOptions& options);
// Flags override the checkpoint's generation_config.json; without either, greedy.
SamplingParams resolve_sampling(const SamplingOptions& options, const GenerationConfig& defaults);

void log_line(const std::string& line);  // one line to stderr

}  // namespace llamaq::cli
