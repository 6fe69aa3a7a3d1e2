// llamaq random-checkpoint: a random-weight checkpoint of a real Llama 3 shape, for benchmarks.
#include "cli_common.h"
#include "commands.h"
#include "model/random_checkpoint.h"

namespace llamaq::cli {
namespace {

struct RandomOptions {
  std::string preset;
  std::string out_dir;
  std::string tokenizer_dir;
  uint64_t seed = 0;
  int threads = 0;
};

void run(const RandomOptions& o) {
  RandomCheckpointOptions options;
  options.seed = o.seed;
  options.threads = o.threads;
  options.tokenizer_dir = o.tokenizer_dir;
  const int64_t bytes = write_random_checkpoint(o.out_dir, o.preset, options);
  log_line(fmt::format("wrote {} ({}): {:.2f} GiB of bf16 weights", o.out_dir, o.preset,
                       double(bytes) / double(1 << 30)));
}

}  // namespace

void register_random_checkpoint(CLI::App& app) {
  auto options = std::make_shared<RandomOptions>();
  CLI::App* cmd = app.add_subcommand(
      "random-checkpoint", "Write a random-weight checkpoint of a real Llama 3 shape (benchmarks)");
  cmd->add_option("--preset", options->preset, "llama3-8b, llama3.1-8b, llama3.2-1b, llama3.2-3b")
      ->required();
  cmd->add_option("-o,--out", options->out_dir, "Output folder")->required();
  cmd->add_option("--tokenizer-dir", options->tokenizer_dir,
                  "Folder whose tokenizer.json and tokenizer_config.json are copied");
  cmd->add_option("-s,--seed", options->seed, "Random seed");
  cmd->add_option("-t,--threads", options->threads, "Threads (0 = all)");
  cmd->callback([options] { run(*options); });
}

}  // namespace llamaq::cli
