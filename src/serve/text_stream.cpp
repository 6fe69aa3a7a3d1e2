#include "serve/text_stream.h"

#include <algorithm>

namespace llamaq::serve {

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop)
    : decoder_(tokenizer, /*skip_special=*/true), stop_(std::move(stop)) {
  for (const std::string& s : stop_)
    longest_stop_ = std::max(longest_stop_, s.size());
}

std::string TextStream::push(int32_t id) {
  if (stopped_) return {};
  text_ += decoder_.push(id);
  return release();
}

std::string TextStream::finish() {
  if (stopped_) return {};
  text_ += decoder_.finish();
  std::string out = release();
  // Generation is over: whatever was held back as a possible stop-string start goes out.
  out += text_.substr(sent_);
  sent_ = text_.size();
  return out;
}

std::string TextStream::release() {
  // A stop string can only newly appear in text that ends in the new bytes.
  const size_t from = sent_ >= longest_stop_ ? sent_ - longest_stop_ + 1 : 0;
  size_t cut = std::string::npos;
  for (const std::string& s : stop_)
    cut = std::min(cut, text_.find(s, from));
  if (cut != std::string::npos) {
    text_.resize(cut);
    stopped_ = true;
    std::string out = text_.substr(std::min(sent_, cut));
    sent_ = text_.size();
    return out;
  }
  // Hold back the longest tail that is a prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stop_) {
    for (size_t n = std::min(s.size() - 1, text_.size() - sent_); n > hold; --n) {
      if (text_.compare(text_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  const size_t end = text_.size() - hold;
  std::string out = end > sent_ ? text_.substr(sent_, end - sent_) : std::string();
  sent_ = std::max(sent_, end);
  return out;
}

}  // namespace llamaq::serve
