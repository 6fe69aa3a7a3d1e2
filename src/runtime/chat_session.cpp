#include "runtime/chat_session.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/streaming_decoder.h"

namespace llamaq {

GenerateResult generate_text(LlamaModel& model, KvCache& cache, int seq, const Tokenizer& tokenizer,
                             std::span<const int32_t> prompt, const GenerateOptions& options,
                             bool show_special, const TextCallback& on_text) {
  StreamingDecoder decoder(tokenizer, /*skip_special=*/!show_special);
  GenerateResult result = generate(model, cache, seq, prompt, options, [&](int32_t token) {
    const std::string text = decoder.push(token);
    return text.empty() || !on_text || on_text(text);
  });
  const std::string rest = decoder.finish();
  if (!rest.empty() && on_text) on_text(rest);
  return result;
}

ChatSession::ChatSession(LlamaModel& model, KvCache& cache, const Tokenizer& tokenizer,
                         std::optional<std::string> system_prompt)
    : model_(model), cache_(cache), tokenizer_(tokenizer), seq_(cache.add_sequence()) {
  if (!tokenizer_.chat_format()) {
    fail("this checkpoint's tokenizer_config.json has no chat_template, so it has no chat format "
         "(use a plain prompt instead)");
  }
  if (system_prompt) messages_.push_back({"system", std::move(*system_prompt)});
}

ChatSession::~ChatSession() { cache_.remove_sequence(seq_); }

void ChatSession::reset() {
  const bool has_system = !messages_.empty() && messages_.front().role == "system";
  messages_.resize(has_system ? 1 : 0);
}

GenerateResult ChatSession::reply(const std::string& user_text, const GenerateOptions& options,
                                  const TextCallback& on_text) {
  std::vector<ChatMessage> turn = messages_;
  turn.push_back({"user", user_text});
  const std::vector<int32_t> prompt = tokenizer_.encode_chat(turn, /*add_generation_prompt=*/true);

  // Reuse the cached prefix; at least one prompt token must run to produce logits.
  size_t common = 0;
  while (common < cached_.size() && common < prompt.size() && cached_[common] == prompt[common]) {
    ++common;
  }
  common = std::min(common, prompt.size() - 1);
  cache_.truncate(seq_, int64_t(common));
  cached_.resize(common);

  std::string reply_text;
  GenerateResult result;
  try {
    result = generate_text(model_, cache_, seq_, tokenizer_, std::span(prompt).subspan(common),
                           options, /*show_special=*/false, [&](std::string_view text) {
                             reply_text += text;
                             return !on_text || on_text(text);
                           });
  } catch (...) {
    cache_.truncate(seq_, std::min<int64_t>(cache_.length(seq_), int64_t(common)));
    throw;
  }
  // The cache holds the prompt and every generated token but the last one sampled.
  cached_ = prompt;
  cached_.insert(cached_.end(), result.tokens.begin(), result.tokens.end());
  cached_.resize(size_t(cache_.length(seq_)));
  turn.push_back({"assistant", reply_text});
  messages_ = std::move(turn);
  return result;
}

}  // namespace llamaq
