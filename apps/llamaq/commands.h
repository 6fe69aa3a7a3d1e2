// Each subcommand registers its flags and its action on the root app.
#pragma once

#include <CLI/CLI.hpp>

namespace llamaq::cli {

void register_logits(CLI::App& app);
void register_generate(CLI::App& app);
void register_chat(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_quantize(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_random_checkpoint(CLI::App& app);
void register_merge(CLI::App& app);
void register_finetune(CLI::App& app);
void register_demo(CLI::App& app);
void register_bench(CLI::App& app);
void register_serve(CLI::App& app);

}  // namespace llamaq::cli
