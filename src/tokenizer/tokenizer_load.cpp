// Loading a Tokenizer: reading the files, building the shared Impl, and applying
// tokenizer_config.json (BOS/EOS names, chat template recognition).
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer_impl.h"

namespace llamaq {
namespace {

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}: {}", path.string(), std::strerror(errno));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) fail("cannot read {}", path.string());
  return std::move(contents).str();
}

// Special tokens the chat formats emit besides the config's bos_token.
constexpr std::string_view kChatSpecialTokens[] = {"<|start_header_id|>", "<|end_header_id|>",
                                                   "<|eot_id|>"};

}  // namespace

Tokenizer::Impl::Impl(std::string_view json_text, std::string_view config_text,
                      std::string_view json_name, std::string_view config_name)
    : definition(parse_tokenizer_json(json_text, json_name)),
      splitter(definition.split_pattern,
               fmt::format("{}: pre_tokenizer.pretokenizers[0].pattern.Regex", json_name)),
      added(definition.added_tokens) {
  for (const auto& [token, id] : definition.extra_token_strings)
    extra_lookup.insert(token, id);
  if (!config_text.empty()) {
    apply_config(parse_tokenizer_config(config_text, config_name), config_name);
  }
}

std::optional<int32_t> Tokenizer::Impl::find_token(std::string_view token) const {
  if (const std::optional<int32_t> id = extra_lookup.find(token)) return id;
  const std::optional<std::string> bytes = byte_level_to_bytes(token);
  if (!bytes || bytes->empty()) return std::nullopt;
  return definition.model.find(*bytes);
}

std::optional<int32_t> Tokenizer::Impl::config_token_id(const std::optional<std::string>& token,
                                                        std::string_view field,
                                                        std::string_view config_name) const {
  if (!token) return std::nullopt;
  const std::optional<int32_t> id = find_token(*token);
  if (!id) fail("{}: {} \"{}\" is not a token of the tokenizer", config_name, field, *token);
  return id;
}

void Tokenizer::Impl::check_chat_tokens(std::string_view bos_token,
                                        std::string_view config_name) const {
  for (const std::string_view name : kChatSpecialTokens) {
    const std::optional<int32_t> id = find_token(name);
    if (!id || !is_special(*id)) {
      fail("{}: the chat template needs the special token {}, which the tokenizer lacks",
           config_name, name);
    }
  }
  if (!is_special(*find_token(bos_token))) {
    fail("{}: bos_token \"{}\" is not a special token", config_name, bos_token);
  }
}

void Tokenizer::Impl::apply_config(const TokenizerConfig& config, std::string_view config_name) {
  config_bos_id = config_token_id(config.bos_token, "bos_token", config_name);
  config_eos_id = config_token_id(config.eos_token, "eos_token", config_name);
  if (!config.chat_template) return;
  try {
    ChatFormat format =
        ChatFormat::recognize(*config.chat_template, config.bos_token.value_or(""), config_name);
    check_chat_tokens(*config.bos_token, config_name);
    chat_format = std::move(format);
  } catch (const Error& e) {
    // Loading still succeeds (plain completion needs no template); chat_format() reports this.
    chat_format_error = e.what();
  }
}

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json,
                               std::string_view json_name, std::string_view config_name) {
  return Tokenizer(
      std::make_shared<const Impl>(tokenizer_json, config_json, json_name, config_name));
}

Tokenizer Tokenizer::load(const std::filesystem::path& tokenizer_json,
                          const std::filesystem::path& tokenizer_config) {
  const std::string json_text = read_text_file(tokenizer_json);
  std::string config_text;
  if (!tokenizer_config.empty() && std::filesystem::exists(tokenizer_config)) {
    config_text = read_text_file(tokenizer_config);
    if (config_text.empty()) fail("{}: the file is empty", tokenizer_config.string());
  }
  return from_json(json_text, config_text, tokenizer_json.string(), tokenizer_config.string());
}

Tokenizer Tokenizer::from_model_dir(const std::filesystem::path& dir) {
  const std::filesystem::path json = dir / "tokenizer.json";
  if (!std::filesystem::exists(json)) fail("{}: no tokenizer.json in this directory", dir.string());
  return load(json, dir / "tokenizer_config.json");
}

}  // namespace llamaq
