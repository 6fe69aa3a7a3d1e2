// llamaq: run and fine-tune Llama 3 models. Subcommands live in cmd_*.cpp.
#include <CLI/CLI.hpp>

#include <iostream>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"llamaq: run and fine-tune Llama 3 models on a CPU or one GPU", "llamaq"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "llamaq 0.1.0");
  llamaq::cli::register_logits(app);
  llamaq::cli::register_generate(app);
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
