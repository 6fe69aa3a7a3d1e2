// llamaq bench --train: the speed of QLoRA training steps (step time, tokens/s, peak device
// memory, model FLOP utilisation) on a preset shape or a checkpoint. Hooked into `llamaq bench`.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace llamaq::cli {

struct TrainBenchOptions {
  bool enabled = false;        // --train
  int64_t seq = 2048;          // tokens of the one training row (batch 1)
  int64_t lora_r = 16;         // LoRA rank on all seven projections, alpha = r
  int64_t steps = 3;           // timed optimizer steps, after one warm-up step
  std::string base = "nf4";    // base weights: nf4 (QLoRA) or bf16
  double peak_tflops = 989.0;  // dense bf16 tensor-core peak of the GPU (H100/H200 SXM: 989)
};

// What `llamaq bench` already parsed: the model or preset, the device, threads and --json.
struct TrainBenchTarget {
  std::string model_dir;
  std::string preset;
  std::string device;
  int threads = 0;
  std::string json_file;
  std::string profile_path;    // --profile: per-op trace of the timed steps
  std::string attn = "flash";  // --attn: comma-separated flash, naive (a row each)
};

void add_train_bench_options(CLI::App& command, TrainBenchOptions& options);
void run_train_bench(const TrainBenchOptions& options, const TrainBenchTarget& target);

}  // namespace llamaq::cli
