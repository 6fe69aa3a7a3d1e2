// Added tokens (tokenizer.json "added_tokens": special tokens such as <|eot_id|> and any tokens
// added after training) and how Hugging Face's AddedVocabulary finds them in input text: before
// pre-tokenization, leftmost-longest literal matches split the text; tokens with
// "normalized": false are found first in the whole text, then "normalized": true ones in the
// remaining gaps (the same text here, as supported files have no normalizer). lstrip/rstrip
// make a match swallow adjacent Unicode whitespace. With special tokens switched off (HF's
// split_special_tokens=True), a special token's text is plain text, while non-special added
// tokens still match.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace llamaq {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// A span of input text: an added token (token_id >= 0) or ordinary text (token_id < 0).
struct TextSegment {
  size_t begin = 0;
  size_t end = 0;
  int32_t token_id = -1;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);

  bool empty() const { return tokens_.empty(); }

  // Splits text[begin, end) into segments (appended to out, empty ones omitted).
  void split(std::string_view text, size_t begin, size_t end, bool match_special,
             std::vector<TextSegment>& out) const;

 private:
  // Longest token whose content starts at text[pos] (within [pos, end)), or nullptr.
  const AddedToken* longest_match(std::string_view text, size_t pos, size_t end) const;

  std::vector<AddedToken> tokens_;
  std::array<std::vector<uint32_t>, 256> by_first_byte_;  // token indices, longest first
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  explicit AddedVocabulary(const std::vector<AddedToken>& tokens);

  bool empty() const { return raw_.empty() && normalized_.empty(); }
  // False when every added token is special (Llama 3): then nothing matches with specials off.
  bool has_non_special_tokens() const { return has_non_special_; }

  // Splits the whole text into added-token and text segments, in order.
  void split(std::string_view text, bool match_special, std::vector<TextSegment>& out) const;

 private:
  AddedTokenMatcher raw_;         // "normalized": false tokens, matched first
  AddedTokenMatcher normalized_;  // "normalized": true tokens, matched in the gaps
  bool has_non_special_ = false;
};

}  // namespace llamaq
