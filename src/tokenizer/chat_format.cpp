// Native rendering of the Llama 3 / 3.1 Instruct chat templates (see chat_format.h); the
// template texts they correspond to are in known_chat_templates.cpp.
#include "tokenizer/chat_format.h"

#include "core/error.h"
#include "tokenizer/jinja_canonical.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8_text.h"

namespace llamaq {
namespace {

constexpr std::string_view kStartHeader = "<|start_header_id|>";
constexpr std::string_view kEndHeader = "<|end_header_id|>";
constexpr std::string_view kEndOfTurn = "<|eot_id|>";

void validate_messages(std::span<const ChatMessage> messages) {
  if (messages.empty()) fail("chat: the conversation has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    if (message.role != "system" && message.role != "user" && message.role != "assistant") {
      fail("chat message {}: role \"{}\" is not supported (use system, user or assistant)", i,
           utf8_lossy(message.role));
    }
    if (const std::optional<size_t> bad = first_invalid_utf8_offset(message.content)) {
      fail("chat message {}: content is not valid UTF-8 (ill-formed sequence at byte {})", i, *bad);
    }
  }
}

// A short printable excerpt of an unrecognised template for the error message.
std::string template_excerpt(std::string_view text) {
  std::string excerpt = utf8_lossy(text.substr(0, 80));
  for (char& c : excerpt) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  return text.size() > 80 ? excerpt + "..." : excerpt;
}

}  // namespace

ChatFormat ChatFormat::recognize(std::string_view chat_template, std::string_view bos_token,
                                 std::string_view source) {
  const std::optional<std::string> canonical = canonical_jinja_template(chat_template);
  static const std::vector<std::optional<std::string>> known_canonical = [] {
    std::vector<std::optional<std::string>> forms;
    for (const KnownChatTemplate& known : known_chat_templates()) {
      forms.push_back(canonical_jinja_template(known.text));
    }
    return forms;
  }();
  const KnownChatTemplate* match = nullptr;
  for (size_t i = 0; canonical && i < known_canonical.size(); ++i) {
    if (known_canonical[i] == canonical) match = &known_chat_templates()[i];
  }
  if (!match) {
    fail(
        "{}: chat_template is not a supported format (llamaq renders the Llama 3 and Llama 3.1 "
        "Instruct templates natively and does not guess others); template begins: \"{}\"",
        source, template_excerpt(chat_template));
  }
  if (bos_token.empty()) {
    fail("{}: the {} chat template starts with bos_token, but the file has none", source,
         match->name);
  }
  return ChatFormat(match, bos_token);
}

void ChatFormat::append_llama3_parts(std::span<const ChatMessage> messages,
                                     std::vector<Part>& parts) const {
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) parts.push_back({true, bos_token_});
    parts.push_back({true, std::string(kStartHeader)});
    parts.push_back({false, messages[i].role});
    parts.push_back({true, std::string(kEndHeader)});
    parts.push_back({false, "\n\n" + std::string(python_strip(messages[i].content))});
    parts.push_back({true, std::string(kEndOfTurn)});
  }
}

void ChatFormat::append_llama31_parts(std::span<const ChatMessage> messages,
                                      const ChatRenderOptions& options,
                                      std::vector<Part>& parts) const {
  std::string_view system_message;
  if (messages.front().role == "system") {
    system_message = python_strip(messages.front().content);
    messages = messages.subspan(1);
  }
  parts.push_back({true, bos_token_});
  parts.push_back({true, std::string(kStartHeader)});
  parts.push_back({false, "system"});
  parts.push_back({true, std::string(kEndHeader)});
  parts.push_back({false, "\n\nCutting Knowledge Date: December 2023\nToday Date: " +
                              options.date_string + "\n\n" + std::string(system_message)});
  parts.push_back({true, std::string(kEndOfTurn)});
  for (const ChatMessage& message : messages) {
    parts.push_back({true, std::string(kStartHeader)});
    parts.push_back({false, message.role});
    parts.push_back({true, std::string(kEndHeader)});
    parts.push_back({false, "\n\n" + std::string(python_strip(message.content))});
    parts.push_back({true, std::string(kEndOfTurn)});
  }
}

std::vector<ChatFormat::Part> ChatFormat::parts(std::span<const ChatMessage> messages,
                                                bool add_generation_prompt,
                                                const ChatRenderOptions& options) const {
  validate_messages(messages);
  if (const std::optional<size_t> bad = first_invalid_utf8_offset(options.date_string)) {
    fail("chat: date_string is not valid UTF-8 (byte {})", *bad);
  }
  std::vector<Part> parts;
  if (known_->kind == ChatTemplateKind::kLlama31) {
    append_llama31_parts(messages, options, parts);
  } else {
    append_llama3_parts(messages, parts);
  }
  if (add_generation_prompt || known_->always_adds_generation_prompt) {
    parts.push_back({true, std::string(kStartHeader)});
    parts.push_back({false, "assistant"});
    parts.push_back({true, std::string(kEndHeader)});
    parts.push_back({false, "\n\n"});
  }
  return parts;
}

std::string ChatFormat::render(std::span<const ChatMessage> messages, bool add_generation_prompt,
                               const ChatRenderOptions& options) const {
  std::string text;
  for (const Part& part : parts(messages, add_generation_prompt, options))
    text += part.text;
  return text;
}

std::vector<int32_t> ChatFormat::encode(const Tokenizer& tokenizer,
                                        std::span<const ChatMessage> messages,
                                        bool add_generation_prompt,
                                        const ChatRenderOptions& options) const {
  std::vector<int32_t> ids;
  std::string pending_text;  // adjacent text parts are tokenized together, as HF does
  const auto flush_text = [&] {
    const std::vector<int32_t> text_ids = tokenizer.encode(pending_text, /*parse_special=*/false);
    ids.insert(ids.end(), text_ids.begin(), text_ids.end());
    pending_text.clear();
  };
  for (const Part& part : parts(messages, add_generation_prompt, options)) {
    if (!part.is_special) {
      pending_text += part.text;
      continue;
    }
    flush_text();
    const std::optional<int32_t> id = tokenizer.find_token(part.text);
    if (!id) fail("chat: the tokenizer has no special token {}", part.text);
    ids.push_back(*id);
  }
  flush_text();
  return ids;
}

}  // namespace llamaq
