// llamaq quantize: a bf16/fp16/fp32 checkpoint in, a bitsandbytes-layout NF4 checkpoint out (the
// format transformers + bitsandbytes read), so one quantization is reused.
#include <filesystem>

#include "cli_common.h"
#include "commands.h"
#include "core/error.h"
#include "core/resources.h"
#include "model/checkpoint_writer.h"
#include "model/weights.h"

namespace llamaq::cli {
namespace {

struct QuantizeOptions {
  std::string model_dir;
  std::string out_dir;
  bool no_double_quant = false;
  bool quant_lm_head = false;
  int threads = 0;
};

void run(const QuantizeOptions& o) {
  const Stopwatch clock;
  const std::filesystem::path config_path = std::filesystem::path(o.model_dir) / "config.json";
  const LlamaConfig config = load_llama_config(config_path);
  if (config.quantization_config) {
    fail("{}: the checkpoint is already quantized ({})", config_path.string(),
         config.quantization_config->value("quant_method", std::string("?")));
  }
  const CheckpointTensors checkpoint = CheckpointTensors::open(o.model_dir);
  LlamaWeights weights = bind_llama_weights(config, checkpoint);
  LoadOptions options;
  options.quantize_nf4 = true;
  options.double_quant = !o.no_double_quant;
  options.quantize_lm_head = o.quant_lm_head;
  options.threads = o.threads;
  options.progress = true;
  quantize_weights(weights, options);
  const int64_t bytes = write_llama_checkpoint(o.out_dir, o.model_dir, config, weights,
                                               {.double_quant = options.double_quant});
  log_line(fmt::format("wrote {}: {:.1f} MiB of tensors (input {:.1f} MiB), {}double quant, "
                       "{:.2f} s, peak memory {:.1f} MiB",
                       o.out_dir, double(bytes) / (1 << 20),
                       double(checkpoint.total_bytes()) / (1 << 20),
                       options.double_quant ? "" : "no ", clock.seconds(),
                       double(peak_resident_bytes()) / (1 << 20)));
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto options = std::make_shared<QuantizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "quantize", "Write a 4-bit NF4 checkpoint in the transformers + bitsandbytes layout");
  cmd->add_option("-m,--model", options->model_dir, "Input checkpoint folder (bf16/fp16/fp32)")
      ->required();
  cmd->add_option("-o,--out", options->out_dir, "Output checkpoint folder")->required();
  cmd->add_flag("--no-double-quant", options->no_double_quant,
                "Keep block scales in float32 (double quantization is the default, as in QLoRA)");
  cmd->add_flag("--quant-lm-head", options->quant_lm_head, "Quantize the LM head too");
  cmd->add_option("-t,--threads", options->threads, "Threads (0 = all)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([options] { run(*options); });
}

}  // namespace llamaq::cli
