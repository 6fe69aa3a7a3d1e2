// Internal: the shared state behind a Tokenizer (see tokenizer.h). Split from tokenizer.cpp so
// loading (tokenizer_load.cpp) and encoding/decoding (tokenizer.cpp) are separate files.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/chat_format.h"
#include "tokenizer/flat_maps.h"
#include "tokenizer/regex_splitter.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_config.h"
#include "tokenizer/tokenizer_json.h"

namespace llamaq {

struct Tokenizer::Impl {
  Impl(std::string_view json_text, std::string_view config_text, std::string_view json_name,
       std::string_view config_name);

  std::optional<int32_t> find_token(std::string_view token) const;
  bool is_token(int32_t id) const {
    return id >= 0 && size_t(id) < definition.token_flags.size() &&
           definition.token_flags[size_t(id)] != 0;
  }
  bool is_special(int32_t id) const {
    return (definition.token_flags[size_t(id)] & TokenizerDefinition::kSpecial) != 0;
  }
  // Appends the ids of text (valid UTF-8) to ids.
  void encode_into(std::string_view text, bool parse_special, std::vector<int32_t>& ids) const;

  TokenizerDefinition definition;
  RegexSplitter splitter;
  AddedVocabulary added;
  ByteStringIdMap extra_lookup;  // definition.extra_token_strings
  std::optional<int32_t> config_bos_id;
  std::optional<int32_t> config_eos_id;
  std::optional<ChatFormat> chat_format;
  std::string chat_format_error;  // why the config's chat_template is unusable, if it is

 private:
  std::optional<int32_t> config_token_id(const std::optional<std::string>& token,
                                         std::string_view field,
                                         std::string_view config_name) const;
  void apply_config(const TokenizerConfig& config, std::string_view config_name);
  void check_chat_tokens(std::string_view bos_token, std::string_view config_name) const;
};

}  // namespace llamaq
