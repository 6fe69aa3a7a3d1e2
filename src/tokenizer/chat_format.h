// Llama 3 / 3.1 Instruct chat formats, rendered natively (no Jinja engine): the output is
// exactly what transformers' apply_chat_template produces with the checkpoint's template for
// system/user/assistant messages (content trimmed like Jinja's `| trim`, one BOS, Llama 3.1's
// system block with "Cutting Knowledge Date" and "Today Date" lines).
//
// encode() differs from Hugging Face in one deliberate way: message content is tokenized as
// plain text, never parsed for special tokens, so a message containing "<|eot_id|>" cannot end
// its turn or forge a header. The template's own special tokens are emitted as ids. For content
// without special-token strings the ids equal Hugging Face's exactly.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/known_chat_templates.h"

namespace llamaq {

class Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatRenderOptions {
  // The "Today Date:" of the Llama 3.1 system block. The default is the template's own default
  // (transformers passes date_string only when asked to); Llama 3 ignores it.
  std::string date_string = "26 Jul 2024";
};

class ChatFormat {
 public:
  // Recognises a tokenizer_config.json chat_template; throws llamaq::Error (naming source) for
  // a template that is not one of the supported formats, or when bos_token is empty.
  static ChatFormat recognize(std::string_view chat_template, std::string_view bos_token,
                              std::string_view source);

  ChatTemplateKind kind() const { return known_->kind; }
  std::string_view name() const { return known_->name; }
  // True for the early Llama 3 template that appends the assistant header even when
  // add_generation_prompt is false (rendering follows the template, as Hugging Face does).
  bool always_adds_generation_prompt() const { return known_->always_adds_generation_prompt; }

  // The prompt text, as apply_chat_template(..., tokenize=False) renders it. Throws
  // llamaq::Error for an empty conversation, an unsupported role or content that is not UTF-8.
  std::string render(std::span<const ChatMessage> messages, bool add_generation_prompt,
                     const ChatRenderOptions& options = {}) const;

  // The prompt ids (see the header comment for the special-token difference).
  std::vector<int32_t> encode(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                              bool add_generation_prompt,
                              const ChatRenderOptions& options = {}) const;

 private:
  // A rendered prompt as a sequence of template special tokens and plain text.
  struct Part {
    bool is_special;
    std::string text;
  };
  ChatFormat(const KnownChatTemplate* known, std::string_view bos_token)
      : known_(known), bos_token_(bos_token) {}
  std::vector<Part> parts(std::span<const ChatMessage> messages, bool add_generation_prompt,
                          const ChatRenderOptions& options) const;
  void append_llama3_parts(std::span<const ChatMessage> messages, std::vector<Part>& parts) const;
  void append_llama31_parts(std::span<const ChatMessage> messages, const ChatRenderOptions& options,
                            std::vector<Part>& parts) const;

  const KnownChatTemplate* known_;
  std::string bos_token_;
};

}  // namespace llamaq
