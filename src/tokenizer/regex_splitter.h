// The pre-tokenizer: Hugging Face's `Split` with behavior "Isolated" and a regex taken from
// tokenizer.json, run with PCRE2 (8-bit, UTF + UCP, JIT-compiled when the platform allows,
// interpreter otherwise). The pieces are the regex matches and the text between them, in order,
// empty pieces dropped. Matches are enumerated with the rules of the `onig` crate's find_iter
// that Hugging Face uses (search again from the end of the last match; an empty match right at
// the end of the previous match is skipped by advancing one character), so even a pattern that
// can match the empty string splits exactly as in Hugging Face.
//
// The pattern is first translated from Hugging Face's regex dialect (Oniguruma) where the two
// engines differ (regex_dialect.h); error offsets refer to the translated pattern.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace llamaq {

class RegexSplitter {
 public:
  // source names the file and field in error messages, e.g. "tokenizer.json: pre_tokenizer".
  RegexSplitter(std::string_view pattern, std::string_view source);
  ~RegexSplitter();
  RegexSplitter(RegexSplitter&&) noexcept;
  RegexSplitter& operator=(RegexSplitter&&) noexcept;

  const std::string& pattern() const { return pattern_; }
  bool jit_compiled() const { return jit_compiled_; }

  // Calls on_piece(begin, end) for every non-empty piece of text (byte offsets). text must be
  // valid UTF-8 (not re-checked here: the caller validates once, which keeps matching linear).
  template <typename OnPiece>
  void split(std::string_view text, OnPiece&& on_piece) const;

  // Leftmost match starting at or after `from`; false when there is none. Throws llamaq::Error
  // when PCRE2 gives up (resource limits) instead of returning a wrong split.
  bool find(std::string_view text, size_t from, size_t& match_begin, size_t& match_end) const;

 private:
  struct Compiled;
  std::unique_ptr<Compiled> compiled_;
  std::string pattern_;
  std::string source_;
  bool jit_compiled_ = false;
};

template <typename OnPiece>
void RegexSplitter::split(std::string_view text, OnPiece&& on_piece) const {
  size_t search_from = 0;
  size_t previous_end = 0;
  bool have_match = false;
  size_t last_match_end = 0;
  size_t begin = 0;
  size_t end = 0;
  while (search_from <= text.size() && find(text, search_from, begin, end)) {
    if (begin == end && have_match && last_match_end == end) {
      // Skip this empty match: advance by one character (UTF-8 lead byte to the next lead byte).
      ++search_from;
      while (search_from < text.size() &&
             (static_cast<unsigned char>(text[search_from]) & 0xC0) == 0x80) {
        ++search_from;
      }
      continue;
    }
    search_from = end;
    have_match = true;
    last_match_end = end;
    if (begin > previous_end) on_piece(previous_end, begin);
    if (end > begin) on_piece(begin, end);
    previous_end = end;
  }
  if (previous_end < text.size()) on_piece(previous_end, text.size());
}

}  // namespace llamaq
