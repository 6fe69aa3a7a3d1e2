#include "bench_train.h"

#include <nlohmann/json.hpp>

#include <iostream>
#include <random>

#include "cli_common.h"
#include "core/error.h"
#include "core/resources.h"
#include "io/atomic_file.h"
#include "model/random_checkpoint.h"
#include "runtime/profiler.h"
#include "train/adamw.h"
#include "train/lora_model.h"
#ifdef LLAMAQ_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace llamaq::cli {
namespace {

// Bytes in use on the current CUDA device (every process and the context included), or 0 on
// the CPU. The backend's caching allocator never returns a block to the driver, so after the
// steps this is the high-water mark of what training held.
double device_used_gib(const std::string& device) {
#ifdef LLAMAQ_HAVE_CUDA
  if (device == "cuda") {
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) fail("bench --train: cudaMemGetInfo failed");
    return double(total - free) / double(1 << 30);
  }
#else
  (void)device;
#endif
  return 0;
}

int64_t projection_params(const LlamaWeights& w) {
  int64_t n = w.lm_head.out_features() * w.lm_head.in_features();
  for (const LayerWeights& l : w.layers) {
    for (const LinearWeight* p :
         {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      n += p->out_features() * p->in_features();
    }
  }
  return n;
}

// Model FLOPs of one trained token (the MFU convention: no recomputation counted). The frozen
// base needs its forward (2 N) and the input gradient (2 N), not weight gradients; causal
// attention's forward is 2 q_dim (seq + 1) FLOPs per token and layer (QK^T and PV over the
// (seq + 1) / 2 keys a query sees on average), its backward twice that.
double flops_per_token(const LlamaConfig& c, const LlamaWeights& w, int64_t seq) {
  const double attention_forward =
      2.0 * double(c.q_dim()) * double(seq + 1) * double(c.num_hidden_layers);
  return 4.0 * double(projection_params(w)) + 3.0 * attention_forward;
}

}  // namespace

void add_train_bench_options(CLI::App& command, TrainBenchOptions& o) {
  command.add_flag("--train", o.enabled, "Benchmark QLoRA training steps instead of inference");
  command.add_option("--seq", o.seq, "--train: tokens per step (batch 1)")
      ->check(CLI::Range(2, 1 << 20));
  command.add_option("--lora-r", o.lora_r, "--train: LoRA rank on all seven projections")
      ->check(CLI::PositiveNumber);
  command.add_option("--steps", o.steps, "--train: timed steps after one warm-up")
      ->check(CLI::PositiveNumber);
  command.add_option("--base", o.base, "--train: base weights, nf4 (QLoRA) or bf16")
      ->check(CLI::IsMember({"nf4", "bf16"}));
  command.add_option("--peak-tflops", o.peak_tflops, "--train: the GPU's dense bf16 peak for MFU")
      ->check(CLI::PositiveNumber);
}

namespace {

struct TrainRow {
  std::string attn;
  double step_s = 0, tokens_per_s = 0, tflops = 0;
  double used_gib = 0, training_gib = 0;  // device memory in use after, and the training's share
  double peak_gib = 0;  // the most the backend's allocator held at once (weights included)
};

// Times o.steps optimizer steps after one warm-up on a backend of its own (`attn` attention),
// whose memory is given back when it returns; with `profile`, writes the trace of the timed
// steps to t.profile_path.
TrainRow time_training(const TrainBenchOptions& o, const TrainBenchTarget& t,
                       const std::string& attn, const LlamaConfig& config,
                       const LlamaWeights& weights, bool profile, int64_t& trainable) {
  ModelOptions model_options;
  model_options.device = t.device;
  model_options.threads = t.threads;
  model_options.attention = attn;
  std::unique_ptr<Backend> backend = make_training_backend(model_options);
  if (profile) backend = std::make_unique<ProfilingBackend>(std::move(backend));
  auto* profiler = dynamic_cast<ProfilingBackend*>(backend.get());
  TrainRow row;
  row.attn = attn;
  const double used_before = device_used_gib(t.device);
  LoraTrainModel model(config, weights, *backend);
  LoraConfig lora;
  lora.r = o.lora_r;
  lora.lora_alpha = double(o.lora_r);
  lora.target_modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                         "gate_proj", "up_proj", "down_proj"};
  model.init_lora(lora, 1);
  std::vector<Tensor> params, grads;
  trainable = 0;
  for (LoraParam& p : model.params()) {
    params.insert(params.end(), {p.a, p.b});
    grads.insert(grads.end(), {p.grad_a, p.grad_b});
    trainable += p.a.numel() + p.b.numel();
  }
  AdamW optimizer(*backend, params);
  AdamWOptions adamw;
  std::mt19937 rng(7);
  std::vector<int32_t> ids(static_cast<size_t>(o.seq));
  for (int32_t& id : ids)
    id = int32_t(rng() % uint32_t(config.vocab_size));
  const auto step = [&] {
    model.zero_grad();
    model.accumulate_gradients(ids, ids, double(o.seq - 1));
    clip_grad_norm(*backend, grads, 1.0);
    optimizer.step(grads, adamw.lr, adamw);
    backend->synchronize();
  };
  log_line(fmt::format("bench --train: {} attention", attn));
  if (profiler) profiler->begin_region("warm-up step");
  step();  // warm-up: kernels loaded, cuBLAS heuristics, the allocator's blocks
  if (profiler) profiler->clear();  // the trace and the table cover the timed steps only
  const Stopwatch clock;
  for (int64_t i = 0; i < o.steps; ++i) {
    if (profiler) profiler->begin_region(fmt::format("step {}", i + 1));
    step();
  }
  if (profiler) profiler->end_region();
  row.step_s = clock.seconds() / double(o.steps);
  row.tokens_per_s = double(o.seq) / row.step_s;
  row.tflops = flops_per_token(config, weights, o.seq) * row.tokens_per_s / 1e12;
  row.used_gib = device_used_gib(t.device);
  row.training_gib = row.used_gib - used_before;
  row.peak_gib = double(backend->memory_stats().peak_reserved) / double(1 << 30);
  if (profiler) finish_profile(*backend, t.profile_path);
  return row;
}

}  // namespace

void run_train_bench(const TrainBenchOptions& o, const TrainBenchTarget& t) {
  if (t.model_dir.empty() == t.preset.empty()) fail("give exactly one of --model and --preset");
  const std::vector<std::string> attns = split_list(t.attn);
  if (attns.empty()) fail("--attn needs at least one value");
  for (const std::string& attn : attns) {
    if (attn != "flash" && attn != "naive") {
      fail("--attn: unknown attention \"{}\" (flash or naive)", attn);
    }
    if (attn == "naive" && t.device != "cuda") {
      fail("--attn naive is a GPU comparison (--device cuda)");
    }
  }
  BenchWeights loaded;
  load_bench_weights(t.preset, t.model_dir, t.threads, loaded);
  const LlamaConfig& config = loaded.config;
  LlamaWeights& weights = loaded.weights;
  if (o.base == "nf4") {
    LoadOptions quant;
    quant.quantize_nf4 = true;
    quant.threads = t.threads;
    quant.progress = true;
    quantize_weights(weights, quant);
  }
  std::vector<TrainRow> rows;
  int64_t trainable = 0;
  for (size_t i = 0; i < attns.size(); ++i) {
    const bool profile = !t.profile_path.empty() && i + 1 == attns.size();  // the last one's
    rows.push_back(time_training(o, t, attns[i], config, weights, profile, trainable));
  }
  std::cout << fmt::format(
      "\nQLoRA training step on {} ({}), base {}, seq {}, batch 1, r {} on all seven projections "
      "({:.1f} M trainable)\n",
      t.preset.empty() ? t.model_dir : t.preset, t.device, o.base, o.seq, o.lora_r,
      double(trainable) / 1e6);
  std::cout << "| attn | step s | tokens/s | model TFLOP/s | MFU | peak GiB (allocator) | device "
               "GiB (in use after) | of it training |\n"
               "|---|---|---|---|---|---|---|---|\n";
  for (const TrainRow& r : rows) {
    std::cout << fmt::format(
        "| {} | {:.3f} | {:.0f} | {:.1f} | {:.1f}% | {} | {:.2f} | {:.2f} |\n", r.attn, r.step_s,
        r.tokens_per_s, r.tflops, 100.0 * r.tflops / o.peak_tflops,
        t.device == "cuda" ? fmt::format("{:.2f}", r.peak_gib) : std::string("-"), r.used_gib,
        r.training_gib);
  }
  std::cout << fmt::format("peak host memory {:.1f} MiB", double(peak_resident_bytes()) / (1 << 20))
            << std::endl;
  if (!t.profile_path.empty()) {
    std::cout << "(--profile: every op of the last row is timed with its own events, so its step "
                 "is slower than without it)\n";
  }
  if (!t.json_file.empty()) {
    nlohmann::json json_rows = nlohmann::json::array();
    for (const TrainRow& r : rows) {
      json_rows.push_back({{"attn", r.attn},
                           {"step_s", r.step_s},
                           {"tokens_per_s", r.tokens_per_s},
                           {"model_tflop_per_s", r.tflops},
                           {"mfu", r.tflops / o.peak_tflops},
                           {"peak_allocator_gib", r.peak_gib},
                           {"device_used_gib", r.used_gib},
                           {"device_training_gib", r.training_gib}});
    }
    const nlohmann::json json = {{"mode", "train"}, {"device", t.device}, {"base", o.base},
                                 {"seq", o.seq},    {"lora_r", o.lora_r}, {"rows", json_rows}};
    write_file_atomic(t.json_file, json.dump(2) + "\n");
  }
}

}  // namespace llamaq::cli
