// llamaq generate: token ids in, generated token ids streamed out, timing summary on stderr.
#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "core/error.h"
#include "core/resources.h"
#include "runtime/generate.h"

namespace llamaq::cli {
namespace {

struct GenerateCliOptions {
  ModelOptions model;
  std::string ids;
  int64_t n_predict = 128;
  int64_t ctx = 0;
  bool ignore_eos = false;
  SamplingOptions sampling;
};

const char* reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::StopToken: return "stop token";
    case StopReason::MaxTokens: return "max tokens";
    case StopReason::Cancelled: return "cancelled";
  }
  return "?";
}

void print_summary(const GenerateResult& r, const SamplingParams& sampling) {
  const double prompt_rate = r.prompt_seconds > 0 ? double(r.prompt_tokens) / r.prompt_seconds : 0;
  // The first generated token comes from the prompt's logits; later ones each cost a step.
  const double steps = double(std::max<size_t>(1, r.tokens.size() + (r.stop_token ? 1 : 0)) - 1);
  const double gen_rate = r.generate_seconds > 0 && steps > 0 ? steps / r.generate_seconds : 0;
  log_line(fmt::format("prompt: {} tokens in {:.3f} s ({:.1f} tokens/s)", r.prompt_tokens,
                       r.prompt_seconds, prompt_rate));
  log_line(fmt::format("generated: {} tokens in {:.3f} s ({:.1f} tokens/s), stopped by {}",
                       r.tokens.size(), r.generate_seconds, gen_rate, reason_name(r.reason)));
  log_line(fmt::format("sampling: temperature {}, top-k {}, top-p {}, min-p {}, seed {}",
                       sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p,
                       sampling.seed));
  log_line(fmt::format("peak memory: {:.1f} MiB", double(peak_resident_bytes()) / (1 << 20)));
}

void run(const GenerateCliOptions& o) {
  const std::vector<int32_t> prompt = parse_token_ids(o.ids, "--ids");
  Engine engine = load_engine(o.model);
  LlamaModel& model = *engine.loaded.model;
  GenerateOptions options;
  options.max_new_tokens = o.n_predict;
  options.sampling = resolve_sampling(o.sampling, engine.loaded.generation);
  if (!o.ignore_eos) options.stop_ids = engine.loaded.eos_token_ids();
  const int64_t needed = int64_t(prompt.size()) + o.n_predict;
  const int64_t ctx = o.ctx > 0 ? o.ctx : needed;
  if (ctx > model.config().max_position_embeddings) {
    log_line(fmt::format("warning: context {} exceeds the model's max_position_embeddings {}", ctx,
                         model.config().max_position_embeddings));
  }
  KvCache cache(*engine.backend, model.config(), ctx);
  const int seq = cache.add_sequence();
  bool first = true;
  const GenerateResult result = generate(model, cache, seq, prompt, options, [&](int32_t token) {
    std::cout << (first ? "" : " ") << token << std::flush;
    first = false;
    return true;
  });
  std::cout << std::endl;
  print_summary(result, options.sampling);
}

}  // namespace

void register_generate(CLI::App& app) {
  auto options = std::make_shared<GenerateCliOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate tokens after a prompt");
  add_model_options(*cmd, options->model);
  cmd->add_option("--ids", options->ids, "Prompt token ids, e.g. 128000,9906")->required();
  cmd->add_option("-n,--n-predict", options->n_predict, "Maximum new tokens")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("-c,--ctx", options->ctx, "Context size in tokens (default: prompt + n)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--ignore-eos", options->ignore_eos, "Do not stop at end-of-sequence tokens");
  add_sampling_options(*cmd, options->sampling);
  cmd->callback([options] { run(*options); });
}

}  // namespace llamaq::cli
