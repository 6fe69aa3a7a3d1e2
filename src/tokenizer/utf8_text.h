// UTF-8 helpers the tokenizer needs: validation with the offset of the first bad byte, lossy
// decoding that replaces ill-formed sequences with U+FFFD exactly as Rust's
// String::from_utf8_lossy and Python's bytes.decode("utf-8", "replace") do (one U+FFFD per
// "maximal subpart", Unicode 15 §3.9), and the two whitespace definitions that matter for Hugging
// Face parity (Python's str.isspace for Jinja's `trim`, Unicode White_Space for Rust's
// char::is_whitespace used by added-token lstrip/rstrip).
//
// Hand-written rather than taken from src/io/utf8.h because the tokenizer library depends on core
// only, and because streaming decoding needs the "incomplete but still valid prefix" distinction
// that a yes/no validator does not give.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace llamaq {

inline constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

// Result of looking at the UTF-8 sequence that starts at some byte.
struct Utf8Sequence {
  enum class Kind {
    kValid,       // a complete, well-formed character of `length` bytes
    kInvalid,     // ill-formed: the first `length` bytes are one maximal subpart (one U+FFFD)
    kIncomplete,  // the input ends inside a sequence that is well-formed so far
  };
  Kind kind;
  size_t length;
};

// Classifies the sequence starting at text[0]; text must not be empty.
Utf8Sequence classify_utf8_sequence(std::string_view text);

// Byte offset of the first ill-formed or truncated sequence, or nullopt when text is valid UTF-8.
std::optional<size_t> first_invalid_utf8_offset(std::string_view text);

inline bool is_valid_utf8_text(std::string_view text) {
  return !first_invalid_utf8_offset(text).has_value();
}

// Appends bytes to out as UTF-8, replacing each maximal ill-formed subpart with U+FFFD. When
// hold_incomplete_tail is true, a trailing sequence that is merely incomplete is not consumed;
// the return value is the number of bytes consumed (all of them when hold_incomplete_tail is
// false, where an incomplete tail becomes one U+FFFD).
size_t append_utf8_lossy(std::string_view bytes, std::string& out, bool hold_incomplete_tail);

inline std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  append_utf8_lossy(bytes, out, /*hold_incomplete_tail=*/false);
  return out;
}

// Decodes the code point of a valid sequence (as classified above) starting at text[0].
char32_t decode_code_point(std::string_view text, size_t length);

void append_code_point(char32_t code_point, std::string& out);

// Python's str.isspace() (what Jinja's `trim` filter strips): Unicode White_Space plus the
// information separators U+001C..U+001F.
bool is_python_whitespace(char32_t code_point);

// Rust's char::is_whitespace: the Unicode White_Space property.
bool is_unicode_white_space(char32_t code_point);

// Python's str.strip() with no arguments, on valid UTF-8 text.
std::string_view python_strip(std::string_view text);

}  // namespace llamaq
