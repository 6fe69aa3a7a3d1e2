// llamaq finetune: QLoRA / LoRA fine-tuning on a JSON Lines chat, Alpaca or text file, writing a
// PEFT adapter. Ctrl-C saves a checkpoint and stops; --resume continues from one.
#include <csignal>

#include "cli_common.h"
#include "commands.h"
#include "core/error.h"
#include "train/trainer.h"

namespace llamaq::cli {
namespace {

struct FinetuneCliOptions {
  TrainOptions train;
  std::string quant = "none";
  std::string targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  int64_t lora_r = 16;
  double lora_alpha = 16;
  bool rslora = false;
  std::string device = "cpu";
};

extern "C" void on_interrupt(int) {
  request_training_stop();
}

void run(FinetuneCliOptions o) {
  TrainOptions& t = o.train;
  t.quantize_nf4 = o.quant == "nf4";
  t.lora.r = o.lora_r;
  t.lora.lora_alpha = o.lora_alpha;
  t.lora.use_rslora = o.rslora;
  if (o.targets == "all-linear") {
    t.lora.all_linear = true;
  } else {
    t.lora.target_modules = split_list(o.targets);
    if (t.lora.target_modules.empty()) fail("--targets: no module names given");
  }
  ModelOptions device;
  device.device = o.device;
  device.threads = t.threads;
  const std::unique_ptr<Backend> backend = make_training_backend(device);
  std::signal(SIGINT, on_interrupt);
  const TrainSummary s = run_training(t, *backend, log_line);
  std::signal(SIGINT, SIG_DFL);
  std::string line = fmt::format(
      "finetune: {} steps in {:.1f} s ({:.0f} tokens/s), loss {:.4f} -> {:.4f}", s.steps, s.seconds,
      s.seconds > 0 ? double(s.tokens) / s.seconds : 0.0, s.first_loss, s.last_loss);
  if (s.eval_loss) line += fmt::format(", eval loss {:.4f}", *s.eval_loss);
  log_line(line + fmt::format("; adapter in {}", t.out_dir.string()));
}

}  // namespace

void register_finetune(CLI::App& app) {
  auto o = std::make_shared<FinetuneCliOptions>();
  TrainOptions& t = o->train;
  CLI::App* cmd =
      app.add_subcommand("finetune", "Fine-tune LoRA adapters (QLoRA with --quant nf4)");
  cmd->add_option("-m,--model", t.model_dir, "Base checkpoint folder")->required();
  cmd->add_option("--data", t.data_file,
                  "JSON Lines: {\"messages\"}, {\"instruction\",\"output\"} or {\"text\"}")
      ->required();
  cmd->add_option("-o,--out", t.out_dir, "Output folder for the adapter, checkpoints and metrics")
      ->required();
  cmd->add_option("--quant", o->quant, "Base weights: none or nf4 (QLoRA)")
      ->check(CLI::IsMember({"none", "nf4"}));
  cmd->add_option("--lora-r", o->lora_r, "LoRA rank")->check(CLI::PositiveNumber);
  cmd->add_option("--lora-alpha", o->lora_alpha, "LoRA alpha (scale = alpha / r)");
  cmd->add_flag("--rslora", o->rslora, "rsLoRA scaling alpha / sqrt(r)");
  cmd->add_option("--lora-dropout", t.lora.lora_dropout,
                  "Dropout on the LoRA input (training only)")
      ->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--targets", o->targets, "Comma-separated projections, or all-linear");
  cmd->add_option("--lr", t.adamw.lr, "Peak learning rate")->check(CLI::PositiveNumber);
  cmd->add_option("--weight-decay", t.adamw.weight_decay, "AdamW weight decay");
  cmd->add_option("--schedule", t.schedule, "constant, linear or cosine")
      ->check(CLI::IsMember({"constant", "linear", "cosine"}));
  cmd->add_option("--warmup", t.warmup, "Warmup steps (or a fraction of the total when < 1)");
  cmd->add_option("--epochs", t.epochs, "Epochs")->check(CLI::PositiveNumber);
  cmd->add_option("--steps", t.max_steps, "Optimizer steps (overrides --epochs)");
  cmd->add_option("--micro-batch", t.batching.micro_batch, "Rows per micro-batch")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--grad-accum", t.batching.grad_accum, "Micro-batches per optimizer step")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", t.batching.seq_len,
                  "Tokens per row (longer examples are truncated)");
  cmd->add_flag("--packing", t.batching.packing, "Pack examples into full rows");
  cmd->add_option("--max-grad-norm", t.max_grad_norm, "Gradient clipping (0 = off)");
  cmd->add_option("--eval-split", t.eval_split, "Fraction of examples held out for eval loss");
  cmd->add_option("--eval-every", t.eval_every, "Evaluate every N steps (and at the end)");
  cmd->add_option("--save-every", t.save_every, "Checkpoint every N steps");
  cmd->add_option("--resume", t.resume_dir, "Continue from a checkpoint folder");
  cmd->add_option("-s,--seed", t.batching.seed, "Seed for initialisation and shuffling");
  cmd->add_option("-t,--threads", t.threads, "CPU threads (0 = all)");
  cmd->add_option("--device", o->device, "cpu or cuda (base, adapters and optimizer on the GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->callback([o] { run(*o); });
}

}  // namespace llamaq::cli
