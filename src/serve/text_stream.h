// The text side of one generation: token ids in, UTF-8 text out, cut at the first stop string.
// Text that might be the start of a stop string is held back until it is known not to be, so a
// stop string never reaches the client, not even in a stream.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/streaming_decoder.h"
#include "tokenizer/tokenizer.h"

namespace llamaq::serve {

class TextStream {
 public:
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop);

  // Adds a token; returns the text that is now safe to send (often empty).
  std::string push(int32_t id);
  // The held-back rest at the end of generation (empty after a stop string).
  std::string finish();

  bool stopped() const { return stopped_; }  // a stop string was found; generation should end

 private:
  std::string release();

  StreamingDecoder decoder_;
  std::vector<std::string> stop_;
  std::string text_;  // everything decoded so far (cut at the stop string once found)
  size_t sent_ = 0;   // bytes of text_ already returned
  size_t longest_stop_ = 0;
  bool stopped_ = false;
};

}  // namespace llamaq::serve
