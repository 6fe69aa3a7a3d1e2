// llamaq demo: the whole fine-tuning story on the bundled tiny model in a few minutes on a CPU:
// fine-tune LoRA adapters on a small chat set, then ask the model each training question and
// compare its answer with the one it was taught.
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "core/error.h"
#include "model/loader.h"
#include "runtime/chat_session.h"
#include "train/trainer.h"

namespace llamaq::cli {
namespace {

struct DemoOptions {
  std::string model_dir = "tests/data/models/tiny-llama3-vocab";
  std::string data_file = "tests/data/train/tiny-chat.jsonl";
  std::string out_dir = "build/demo-adapter";
  int64_t epochs = 120;
  int threads = 0;
};

// The conversations of the data file: the messages before the last answer, and that answer.
std::vector<std::pair<std::vector<ChatMessage>, std::string>> read_conversations(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  std::vector<std::pair<std::vector<ChatMessage>, std::string>> out;
  for (std::string line; std::getline(in, line);) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::vector<ChatMessage> messages;
    const nlohmann::json record = nlohmann::json::parse(line);
    for (const auto& m : record.at("messages")) {
      messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
    }
    if (messages.empty() || messages.back().role != "assistant") continue;
    std::string answer = messages.back().content;
    messages.pop_back();
    out.emplace_back(std::move(messages), std::move(answer));
  }
  return out;
}

void run(const DemoOptions& o) {
  TrainOptions t;
  t.model_dir = o.model_dir;
  t.data_file = o.data_file;
  t.out_dir = o.out_dir;
  t.lora.r = 16;
  t.lora.lora_alpha = 32;
  t.lora.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  t.adamw.lr = 2e-2;
  t.warmup = 0.05;
  t.epochs = o.epochs;
  t.batching.micro_batch = 4;
  t.batching.seq_len = 256;
  t.eval_split = 0;
  t.threads = o.threads;
  log_line("1. fine-tuning " + o.model_dir + " on " + o.data_file);
  const TrainSummary s = run_training(t, log_line);
  log_line(fmt::format("   loss {:.3f} -> {:.3f} ({:.1f}% lower) in {:.0f} s", s.first_loss, s.last_loss,
                       100 * (1 - s.last_loss / s.first_loss), s.seconds));

  log_line("2. asking the fine-tuned model the training questions (greedy)");
  auto backend = make_cpu_backend(o.threads);
  LoadOptions load;
  load.lora_dir = o.out_dir;
  LoadedModel loaded = load_model(o.model_dir, *backend, {}, load);
  const Tokenizer tokenizer = Tokenizer::from_model_dir(o.model_dir);
  GenerateOptions options;
  options.max_new_tokens = 32;
  options.stop_ids = tokenizer.stop_ids(loaded.eos_token_ids());
  int correct = 0;
  const auto conversations = read_conversations(o.data_file);
  for (const auto& [messages, answer] : conversations) {
    const std::vector<int32_t> prompt = tokenizer.encode_chat(messages, true);
    KvCache cache(*backend, loaded.config, int64_t(prompt.size()) + options.max_new_tokens);
    std::string reply;
    generate_text(*loaded.model, cache, cache.add_sequence(), tokenizer, prompt, options, false,
                  [&](std::string_view text) {
                    reply += text;
                    return true;
                  });
    correct += reply == answer;
    std::cout << (reply == answer ? "  ok   " : "  MISS ") << messages.back().content << "\n"
              << "       -> " << reply << "\n";
  }
  std::cout << fmt::format("{} of {} answers exactly as taught; adapter in {} (try: llamaq chat "
                           "--model {} --lora {})",
                           correct, conversations.size(), o.out_dir, o.model_dir, o.out_dir)
            << std::endl;
}

}  // namespace

void register_demo(CLI::App& app) {
  auto o = std::make_shared<DemoOptions>();
  CLI::App* cmd = app.add_subcommand(
      "demo", "Fine-tune the bundled tiny model on a small chat set, then chat with it");
  cmd->add_option("-m,--model", o->model_dir, "Base model (default: the bundled tiny model)");
  cmd->add_option("--data", o->data_file, "Chat JSONL to learn");
  cmd->add_option("-o,--out", o->out_dir, "Where the adapter goes");
  cmd->add_option("--epochs", o->epochs, "Epochs")->check(CLI::PositiveNumber);
  cmd->add_option("-t,--threads", o->threads, "CPU threads (0 = all)");
  cmd->callback([o] { run(*o); });
}

}  // namespace llamaq::cli
