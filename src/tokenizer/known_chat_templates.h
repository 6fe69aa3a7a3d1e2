// The chat templates llamaq recognises in tokenizer_config.json, verbatim as Meta ships them on
// the Hugging Face Hub. Recognition compares canonical forms (jinja_canonical.h), so copies that
// differ only in whitespace Jinja removes, or in how string literals are escaped, still match.
#pragma once

#include <span>
#include <string_view>

namespace llamaq {

enum class ChatTemplateKind {
  kLlama3,   // Llama 3 Instruct: one header + content + <|eot_id|> per message
  kLlama31,  // Llama 3.1 / 3.3 Instruct: always a system block with the knowledge/today dates
};

struct KnownChatTemplate {
  ChatTemplateKind kind;
  bool always_adds_generation_prompt;
  std::string_view name;
  std::string_view text;
};

std::span<const KnownChatTemplate> known_chat_templates();

}  // namespace llamaq
