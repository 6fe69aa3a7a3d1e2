// llamaq chat: an interactive multi-turn chat in the checkpoint's chat format, streaming each
// reply. Reads one message per line, so it also works with piped stdin; /reset, /exit, Ctrl-D.
#include <unistd.h>

#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "core/error.h"
#include "runtime/chat_session.h"

namespace llamaq::cli {
namespace {

struct ChatCliOptions {
  ModelOptions model;
  std::optional<std::string> system;
  int64_t n_predict = 512;
  int64_t ctx = 4096;
  SamplingOptions sampling;
};

constexpr const char* kHelp = "commands: /reset forgets the conversation, /exit (or Ctrl-D) quits";

void run(const ChatCliOptions& o) {
  Engine engine = load_engine(o.model);
  LlamaModel& model = *engine.loaded.model;
  const Tokenizer tokenizer = load_tokenizer(o.model.model_dir);
  GenerateOptions options;
  options.max_new_tokens = o.n_predict;
  options.sampling = resolve_sampling(o.sampling, engine.loaded.generation);
  options.stop_ids = tokenizer.stop_ids(engine.loaded.eos_token_ids());
  const int64_t ctx = std::min(o.ctx, model.config().max_position_embeddings);
  KvCache cache(*engine.backend, model.config(), ctx);
  ChatSession session(model, cache, tokenizer, o.system);

  const bool interactive = isatty(STDIN_FILENO);
  if (interactive) std::cout << kHelp << "\n";
  std::string line;
  int turns = 0;
  int64_t generated = 0;
  double seconds = 0;
  for (;;) {
    if (interactive) std::cout << "> " << std::flush;
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      session.reset();
      log_line("(conversation reset)");
      continue;
    }
    if (line.empty()) continue;
    if (line == "/help") {
      std::cout << kHelp << "\n";
      continue;
    }
    try {
      const GenerateResult r = session.reply(line, options, [](std::string_view text) {
        std::cout << text << std::flush;
        return true;
      });
      std::cout << std::endl;
      ++turns;
      generated += int64_t(r.tokens.size());
      seconds += r.prompt_seconds + r.generate_seconds;
      if (r.reason == StopReason::MaxTokens) log_line("(reply cut at -n tokens)");
    } catch (const Error& e) {
      // A full context or a bad message ends the turn, not the session.
      std::cout << std::endl;
      log_line(std::string("llamaq: error: ") + e.what() + " (/reset starts over)");
    }
  }
  if (interactive) std::cout << std::endl;
  log_line(fmt::format("chat: {} turns, {} reply tokens in {:.2f} s, context {} of {} tokens, "
                       "seed {}",
                       turns, generated, seconds, session.context_tokens(), ctx,
                       options.sampling.seed));
}

}  // namespace

void register_chat(CLI::App& app) {
  auto options = std::make_shared<ChatCliOptions>();
  CLI::App* cmd = app.add_subcommand("chat", "Interactive chat (one message per line on stdin)");
  add_model_options(*cmd, options->model);
  cmd->add_option("--system", options->system, "System message");
  cmd->add_option("-n,--n-predict", options->n_predict, "Maximum tokens per reply")
      ->check(CLI::PositiveNumber);
  cmd->add_option("-c,--ctx", options->ctx, "Context size in tokens")->check(CLI::PositiveNumber);
  add_sampling_options(*cmd, options->sampling);
  cmd->callback([options] { run(*options); });
}

}  // namespace llamaq::cli
