// One conversation over one KV-cache sequence: messages in, the assistant's reply streamed out as
// text. Each turn re-renders the whole conversation with the checkpoint's chat format and reuses
// the longest prefix of tokens already in the cache, so earlier turns are not recomputed.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/kv_cache.h"
#include "model/llama_model.h"
#include "runtime/generate.h"
#include "tokenizer/chat_format.h"
#include "tokenizer/tokenizer.h"

namespace llamaq {

// Receives each piece of completed text; returning false stops generation.
using TextCallback = std::function<bool(std::string_view text)>;

class ChatSession {
 public:
  ChatSession(LlamaModel& model, KvCache& cache, const Tokenizer& tokenizer,
              std::optional<std::string> system_prompt);
  ~ChatSession();
  ChatSession(const ChatSession&) = delete;
  ChatSession& operator=(const ChatSession&) = delete;

  // Adds the user message, generates and streams the reply, and appends it to the history.
  // `options.stop_ids` should hold the tokenizer's stop ids. On error the history is unchanged.
  GenerateResult reply(const std::string& user_text, const GenerateOptions& options,
                       const TextCallback& on_text);

  // Forgets every turn but the system prompt.
  void reset();

  const std::vector<ChatMessage>& messages() const { return messages_; }
  int64_t context_tokens() const { return int64_t(cached_.size()); }

 private:
  LlamaModel& model_;
  KvCache& cache_;
  Tokenizer tokenizer_;
  int seq_;
  std::vector<ChatMessage> messages_;
  std::vector<int32_t> cached_;  // the tokens whose keys and values are in the cache
};

// Generates after `prompt` and streams the text (skipping special tokens unless asked).
GenerateResult generate_text(LlamaModel& model, KvCache& cache, int seq, const Tokenizer& tokenizer,
                             std::span<const int32_t> prompt, const GenerateOptions& options,
                             bool show_special, const TextCallback& on_text);

}  // namespace llamaq
