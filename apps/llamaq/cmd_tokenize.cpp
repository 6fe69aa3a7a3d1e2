// llamaq tokenize: text to token ids (and pieces) with a checkpoint's tokenizer; --jsonl turns
// one process into a bulk tokenizer for pipelines: one JSON request per line in, one result out.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "core/error.h"

namespace llamaq::cli {
namespace {

using nlohmann::json;

struct TokenizeOptions {
  std::string model_dir;
  std::string tokenizer_file;
  std::string text;
  bool pieces = false;
  bool parse_special = false;
  bool bos = false;
  bool jsonl = false;
};

Tokenizer open_tokenizer(const TokenizeOptions& o) {
  if (o.model_dir.empty() == o.tokenizer_file.empty()) fail("give exactly one of --model and --tokenizer");
  if (!o.model_dir.empty()) return load_tokenizer(o.model_dir);
  const std::filesystem::path file(o.tokenizer_file);
  return Tokenizer::load(file, file.parent_path() / "tokenizer_config.json");
}

void print_ids(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool pieces) {
  if (!pieces) {
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    std::cout << line << "\n";
    return;
  }
  for (int32_t id : ids) {
    const int32_t one[1] = {id};
    std::cout << id << "\t" << json(tokenizer.decode(one, false)).dump() << "\n";
  }
}

// One --jsonl request: {"text", "parse_special"?, "add_bos"?} | {"ids", "skip_special"?} |
// {"messages", "add_generation_prompt"?}.
json answer(const Tokenizer& tokenizer, const json& request) {
  if (!request.is_object()) fail("expected a JSON object");
  if (request.contains("text")) {
    const std::string& text = request["text"].get_ref<const std::string&>();
    const bool special = request.value("parse_special", true);
    const bool bos = request.value("add_bos", false);
    return {{"ids", bos ? tokenizer.encode_with_bos(text, special) : tokenizer.encode(text, special)}};
  }
  if (request.contains("ids")) {
    const auto ids = request["ids"].get<std::vector<int32_t>>();
    return {{"text", tokenizer.decode(ids, request.value("skip_special", false))}};
  }
  if (request.contains("messages")) {
    std::vector<ChatMessage> messages;
    for (const json& m : request["messages"]) {
      messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
    }
    const bool gen = request.value("add_generation_prompt", true);
    const ChatFormat* format = tokenizer.chat_format();
    if (!format) fail("the tokenizer has no chat template");
    return {{"rendered", format->render(messages, gen)},
            {"ids", tokenizer.encode_chat(messages, gen)}};
  }
  fail("expected one of \"text\", \"ids\" or \"messages\"");
}

void run_jsonl(const Tokenizer& tokenizer) {
  std::string line;
  int64_t number = 0;
  while (std::getline(std::cin, line)) {
    ++number;
    if (line.empty()) continue;
    json result;
    try {
      result = answer(tokenizer, json::parse(line));
    } catch (const std::exception& e) {  // llamaq::Error and nlohmann's parse/type errors
      result = {{"error", fmt::format("line {}: {}", number, e.what())}};
    }
    std::cout << result.dump(-1, ' ', false, json::error_handler_t::replace) << "\n" << std::flush;
  }
}

void run(const TokenizeOptions& o) {
  const Tokenizer tokenizer = open_tokenizer(o);
  if (o.jsonl) {
    if (!o.text.empty()) fail("--jsonl reads requests from stdin; give no TEXT");
    run_jsonl(tokenizer);
    return;
  }
  const auto ids = o.bos ? tokenizer.encode_with_bos(o.text, o.parse_special)
                         : tokenizer.encode(o.text, o.parse_special);
  print_ids(tokenizer, ids, o.pieces);
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto options = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Text to token ids with a checkpoint's tokenizer");
  cmd->add_option("-m,--model", options->model_dir, "Checkpoint folder with tokenizer.json");
  cmd->add_option("--tokenizer", options->tokenizer_file, "A tokenizer.json file");
  cmd->add_option("text", options->text, "Text to tokenize");
  cmd->add_flag("--pieces", options->pieces, "One line per token: id and its text");
  cmd->add_flag("--parse-special", options->parse_special,
                "Turn special-token text like <|eot_id|> into its id");
  cmd->add_flag("--bos", options->bos, "Add the beginning-of-text token");
  cmd->add_flag("--jsonl", options->jsonl,
                "Read JSON requests from stdin, one per line: {\"text\"}, {\"ids\"} or "
                "{\"messages\"}; write one JSON result per line");
  cmd->callback([options] { run(*options); });
}

}  // namespace llamaq::cli
