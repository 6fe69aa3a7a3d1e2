// llamaq generate: a prompt (token ids, text, or a chat message) in; generated tokens streamed
// out as text (or ids for an ids prompt); timing summary on stderr.
#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "core/error.h"
#include "model/config.h"
#include "runtime/chat_session.h"

namespace llamaq::cli {
namespace {

struct GenerateCliOptions {
  ModelOptions model;
  std::string ids;
  std::string prompt;
  std::string prompt_file;
  bool chat = false;
  std::optional<std::string> system;
  bool no_parse_special = false;
  bool show_special = false;
  int64_t n_predict = 128;
  int64_t ctx = 0;
  bool ignore_eos = false;
  SamplingOptions sampling;
};

std::string prompt_text(const GenerateCliOptions& o) {
  return o.prompt_file.empty() ? o.prompt : read_text_file(o.prompt_file);
}

std::vector<int32_t> text_prompt_ids(const GenerateCliOptions& o, const Tokenizer& tokenizer) {
  if (!o.chat) {
    if (o.system) fail("--system needs --chat");
    return tokenizer.encode_with_bos(prompt_text(o), !o.no_parse_special);
  }
  std::vector<ChatMessage> messages;
  if (o.system) messages.push_back({"system", *o.system});
  messages.push_back({"user", prompt_text(o)});
  return tokenizer.encode_chat(messages, /*add_generation_prompt=*/true);
}

void run(const GenerateCliOptions& o) {
  const bool text_mode = o.ids.empty();
  if (text_mode == (o.prompt.empty() && o.prompt_file.empty()) || (!o.prompt.empty() && !o.prompt_file.empty())) {
    fail("give exactly one of --ids, --prompt and --prompt-file");
  }
  if (!text_mode && o.chat) fail("--chat needs a text prompt (--prompt or --prompt-file)");
  Engine engine = load_engine(o.model);
  LlamaModel& model = *engine.loaded.model;
  std::optional<Tokenizer> tokenizer;
  std::vector<int32_t> prompt;
  GenerateOptions options;
  options.max_new_tokens = o.n_predict;
  options.sampling = resolve_sampling(o.sampling, engine.loaded.generation);
  if (text_mode) {
    tokenizer = load_tokenizer(o.model.model_dir);
    prompt = text_prompt_ids(o, *tokenizer);
    if (!o.ignore_eos) options.stop_ids = tokenizer->stop_ids(engine.loaded.eos_token_ids());
  } else {
    prompt = parse_token_ids(o.ids, "--ids");
    if (!o.ignore_eos) options.stop_ids = engine.loaded.eos_token_ids();
  }
  const int64_t ctx = o.ctx > 0 ? o.ctx : int64_t(prompt.size()) + o.n_predict;
  if (ctx > model.config().max_position_embeddings) {
    log_line(fmt::format("warning: context {} exceeds the model's max_position_embeddings {}", ctx,
                         model.config().max_position_embeddings));
  }
  KvCache cache(*engine.backend, model.config(), ctx);
  const int seq = cache.add_sequence();
  GenerateResult result;
  if (text_mode) {
    result = generate_text(model, cache, seq, *tokenizer, prompt, options, o.show_special,
                           [](std::string_view text) {
                             std::cout << text << std::flush;
                             return true;
                           });
  } else {
    bool first = true;
    result = generate(model, cache, seq, prompt, options, [&](int32_t token) {
      std::cout << (first ? "" : " ") << token << std::flush;
      first = false;
      return true;
    });
  }
  std::cout << std::endl;
  print_generation_summary(result, options.sampling);
  finish_profile(*engine.backend, o.model.profile_path);
}

}  // namespace

void register_generate(CLI::App& app) {
  auto options = std::make_shared<GenerateCliOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text (or token ids) after a prompt");
  add_model_options(*cmd, options->model);
  cmd->add_option("-p,--prompt", options->prompt, "Prompt text");
  cmd->add_option("-f,--prompt-file", options->prompt_file, "Read the prompt text from a file");
  cmd->add_option("--ids", options->ids, "Prompt token ids instead of text, e.g. 128000,9906");
  cmd->add_flag("--chat", options->chat,
                "Send the prompt as a user message in the checkpoint's chat format");
  cmd->add_option("--system", options->system, "System message (with --chat)");
  cmd->add_flag("--no-parse-special", options->no_parse_special,
                "Treat special-token text like <|eot_id|> in a plain prompt as ordinary text");
  cmd->add_flag("--show-special", options->show_special, "Print special tokens in the output");
  cmd->add_option("-n,--n-predict", options->n_predict, "Maximum new tokens")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("-c,--ctx", options->ctx, "Context size in tokens (default: prompt + n)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--ignore-eos", options->ignore_eos, "Do not stop at end-of-sequence tokens");
  add_sampling_options(*cmd, options->sampling);
  add_profile_option(*cmd, options->model.profile_path);
  cmd->callback([options] { run(*options); });
}

}  // namespace llamaq::cli
