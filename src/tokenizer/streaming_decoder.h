// Incremental decoding for generation: push token ids one at a time and get back only complete
// UTF-8 text. A token that ends inside a multi-byte character is held until the character
// completes; ill-formed bytes become U+FFFD as soon as they are known to be ill-formed. The
// concatenation of all push() results and finish() equals Tokenizer::decode of the same ids,
// exactly (the lossy UTF-8 decision for a byte never depends on bytes after it, except for a
// sequence still incomplete, which is what is held).
#pragma once

#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace llamaq {

class StreamingDecoder {
 public:
  // Keeps its own (shared, cheap) copy of the tokenizer.
  StreamingDecoder(const Tokenizer& tokenizer, bool skip_special);

  // Text completed by this token (often empty mid-character). Throws llamaq::Error for an id
  // that is not a token (the decoder state is unchanged then).
  std::string push(int32_t id);

  // Flushes held bytes (an incomplete character becomes one U+FFFD, as HF decode would) and
  // resets the decoder for a new sequence.
  std::string finish();

  // Bytes held back waiting for the rest of a character (0..3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  Tokenizer tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace llamaq
