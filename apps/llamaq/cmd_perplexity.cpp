// llamaq perplexity: perplexity of a model over a text file in sliding windows, and with
// --kl-base the KL divergence and top-1 agreement against another model (e.g. bf16 vs NF4).
#include <iostream>
#include <optional>

#include "cli_common.h"
#include "commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "model/config.h"
#include "runtime/perplexity.h"

namespace llamaq::cli {
namespace {

struct PerplexityCliOptions {
  ModelOptions model;
  std::string file;
  std::string kl_base;
  PerplexityOptions eval;
  int64_t max_tokens = 0;
};

void run(const PerplexityCliOptions& o) {
  Engine engine = load_engine(o.model);
  const Tokenizer tokenizer = load_tokenizer(o.model.model_dir);
  std::vector<int32_t> tokens = tokenizer.encode_with_bos(read_text_file(o.file), false);
  if (o.max_tokens > 0 && int64_t(tokens.size()) > o.max_tokens) tokens.resize(size_t(o.max_tokens));
  std::optional<Engine> base;
  if (!o.kl_base.empty()) {
    ModelOptions base_options = o.model;
    base_options.model_dir = o.kl_base;
    base_options.quant = "none";
    base.emplace(load_engine(base_options));
  }
  log_line(fmt::format("{}: {} tokens, windows of {} tokens every {}", o.file, tokens.size(),
                       o.eval.ctx, o.eval.stride > 0 ? o.eval.stride : o.eval.ctx));
  std::optional<ProgressBar> bar;
  const PerplexityResult r = evaluate_perplexity(
      *engine.loaded.model, tokens, o.eval, base ? base->loaded.model.get() : nullptr,
      [&](int64_t done, int64_t total) {
        if (!bar) bar.emplace("perplexity", total, "windows");
        (void)done;
        bar->advance(1);
      });
  if (bar) bar->finish();
  std::string line = fmt::format("perplexity: {:.4f} over {} tokens in {} windows", r.perplexity(),
                                 r.scored, r.windows);
  if (base) {
    line += fmt::format("; vs {}: mean KL {:.6f} nats, top-1 agreement {:.2f}%", o.kl_base,
                        r.mean_kl(), 100 * r.top1_agreement());
  }
  std::cout << line << std::endl;
}

}  // namespace

void register_perplexity(CLI::App& app) {
  auto options = std::make_shared<PerplexityCliOptions>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a text file (and KL vs a base)");
  add_model_options(*cmd, options->model);
  cmd->add_option("-f,--file", options->file, "Text file")->required();
  cmd->add_option("-c,--ctx", options->eval.ctx, "Tokens per window")->check(CLI::PositiveNumber);
  cmd->add_option("--stride", options->eval.stride,
                  "A new window every N tokens (default: ctx, no overlap)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--batch", options->eval.batch, "Tokens per forward call")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-tokens", options->max_tokens, "Only the first N tokens of the file")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--kl-base", options->kl_base,
                  "Base checkpoint: also report mean KL(base || model) and top-1 agreement");
  cmd->callback([options] { run(*options); });
}

}  // namespace llamaq::cli
