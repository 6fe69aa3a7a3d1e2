// llamaq: run and fine-tune Llama 3 models. Subcommands live in cmd_*.cpp.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <iostream>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"llamaq: run and fine-tune Llama 3 models on a CPU or one GPU", "llamaq"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "llamaq 0.1.0");
  llamaq::cli::register_logits(app);
  llamaq::cli::register_generate(app);
  llamaq::cli::register_chat(app);
  llamaq::cli::register_tokenize(app);
  llamaq::cli::register_quantize(app);
  llamaq::cli::register_perplexity(app);
  llamaq::cli::register_random_checkpoint(app);
  llamaq::cli::register_merge(app);
  llamaq::cli::register_finetune(app);
  llamaq::cli::register_demo(app);
  llamaq::cli::register_bench(app);
#ifdef LLAMAQ_HAVE_SERVE
  llamaq::cli::register_serve(app);
#endif
  const auto commands = app.get_subcommands([](const CLI::App*) { return true; });
  const auto is_command = [&](const char* name) {
    return std::any_of(commands.begin(), commands.end(),
                       [&](const CLI::App* c) { return c->get_name() == name; });
  };
  if (argc > 1 && argv[1][0] != '-' && !is_command(argv[1])) {
    std::cerr << "llamaq: error: unknown command '" << argv[1] << "' (see llamaq --help)\n";
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const llamaq::Error& e) {
    std::cerr << "llamaq: error: " << e.what() << std::endl;
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "llamaq: error: out of memory" << std::endl;
    return 1;
  }
  return 0;
}
