// The QLoRA trainer: data -> micro-batches -> forward/backward of the LoRA model -> AdamW with a
// warmup + decay schedule and gradient clipping -> PEFT adapter. Progress bar and metrics files,
// periodic evaluation, checkpoints every N steps and on Ctrl-C (adapter + optimizer state + data
// position, written atomically), and --resume that continues to the same result.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "backend/backend.h"
#include "io/peft_adapter.h"
#include "train/adamw.h"
#include "train/batching.h"

namespace llamaq {

struct TrainOptions {
  std::filesystem::path model_dir;
  std::filesystem::path data_file;
  std::filesystem::path out_dir;
  std::filesystem::path resume_dir;  // a checkpoint folder written by an earlier run
  bool quantize_nf4 = false;         // QLoRA: the frozen base in NF4
  LoraConfig lora;                   // r, alpha, targets, rsLoRA
  AdamWOptions adamw;                // lr and weight decay
  std::string schedule = "cosine";
  double warmup = 0;                 // steps (>= 1) or a fraction of the total (< 1)
  int64_t epochs = 1;
  int64_t max_steps = 0;             // > 0 overrides epochs
  BatchingOptions batching;
  double max_grad_norm = 1.0;
  double eval_split = 0.05;
  int64_t eval_every = 0;            // steps; 0 = at the end only
  int64_t save_every = 0;            // steps; 0 = only at the end (and on Ctrl-C)
  int threads = 0;
};

struct TrainSummary {
  int64_t steps = 0;
  double first_loss = 0;
  double last_loss = 0;
  std::optional<double> eval_loss;
  double seconds = 0;
  int64_t tokens = 0;
  bool interrupted = false;
};

// Runs training on the CPU reference backend (options.threads threads); `log` gets one-line
// messages. Throws llamaq::Error for bad options or data.
TrainSummary run_training(const TrainOptions& options,
                          const std::function<void(const std::string&)>& log);
// The same on `backend` (the CUDA backend for `llamaq finetune --device cuda`): the base, the
// adapters, their gradients and the AdamW moments live there.
TrainSummary run_training(const TrainOptions& options, Backend& backend,
                          const std::function<void(const std::string&)>& log);

// Set by a SIGINT handler: the trainer checkpoints and stops after the current step.
void request_training_stop();

}  // namespace llamaq
