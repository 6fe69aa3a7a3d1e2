// llamaq merge: a base checkpoint plus a PEFT LoRA adapter in, a merged dense checkpoint out
// (W' = W + scale * B A, as peft's merge_and_unload), loadable anywhere without peft.
#include "cli_common.h"
#include "commands.h"
#include "core/resources.h"
#include "model/checkpoint_writer.h"
#include "model/lora.h"

namespace llamaq::cli {
namespace {

struct MergeOptions {
  std::string model_dir;
  std::string lora_dir;
  std::string out_dir;
  std::string dtype = "bf16";
  int threads = 0;
};

void run(const MergeOptions& o) {
  const Stopwatch clock;
  const LlamaConfig config = load_llama_config(std::filesystem::path(o.model_dir) / "config.json");
  check_quantization_config(config, o.model_dir + "/config.json");
  const CheckpointTensors checkpoint = CheckpointTensors::open(o.model_dir);
  LlamaWeights weights = bind_llama_weights(config, checkpoint);
  attach_lora(weights, load_peft_adapter(o.lora_dir));
  ThreadPool pool(o.threads);
  // An NF4 base is dequantized, so the merged checkpoint is dense everywhere.
  merge_lora(weights, o.dtype == "f32" ? DType::F32 : DType::BF16, pool, /*densify_all=*/true);
  const int64_t bytes = write_llama_checkpoint(o.out_dir, o.model_dir, config, weights, {});
  log_line(fmt::format("wrote {}: {:.1f} MiB of {} tensors, {:.2f} s", o.out_dir,
                       double(bytes) / (1 << 20), o.dtype, clock.seconds()));
}

}  // namespace

void register_merge(CLI::App& app) {
  auto options = std::make_shared<MergeOptions>();
  CLI::App* cmd = app.add_subcommand("merge", "Merge a LoRA adapter into a dense checkpoint");
  cmd->add_option("-m,--model", options->model_dir, "Base checkpoint folder")->required();
  cmd->add_option("--lora", options->lora_dir, "PEFT adapter folder")->required();
  cmd->add_option("-o,--out", options->out_dir, "Output checkpoint folder")->required();
  cmd->add_option("--dtype", options->dtype, "Merged weight type: bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}));
  cmd->add_option("-t,--threads", options->threads, "Threads (0 = all)");
  cmd->callback([options] { run(*options); });
}

}  // namespace llamaq::cli
