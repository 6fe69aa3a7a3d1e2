// StreamingDecoder: holds back only a trailing sequence that is still a valid UTF-8 prefix.
#include "tokenizer/streaming_decoder.h"

#include "tokenizer/utf8_text.h"

namespace llamaq {

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamingDecoder::push(int32_t id) {
  const std::string& bytes = tokenizer_.token_bytes(id);
  if (skip_special_ && tokenizer_.is_special(id)) return {};
  pending_ += bytes;
  std::string text;
  const size_t consumed = append_utf8_lossy(pending_, text, /*hold_incomplete_tail=*/true);
  pending_.erase(0, consumed);
  return text;
}

std::string StreamingDecoder::finish() {
  std::string text = utf8_lossy(pending_);
  pending_.clear();
  return text;
}

}  // namespace llamaq
