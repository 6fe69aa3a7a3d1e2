// The parts of tokenizer_config.json (transformers' tokenizer settings) the engine uses: the
// BOS/EOS token strings and the Jinja chat template. Everything else there (model_max_length,
// clean_up_tokenization_spaces, ...) does not change ids; transformers does not apply the
// clean-up for Llama 3 decoding (checked against the reference fixtures), so neither do we.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace llamaq {

struct TokenizerConfig {
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::optional<std::string> chat_template;
};

// Token fields may be a string or an AddedToken object {"content": ...}; chat_template may be a
// string or a list of {"name", "template"} (the one named "default" is used).
TokenizerConfig parse_tokenizer_config(std::string_view json_text, std::string_view source);

}  // namespace llamaq
