// Oniguruma -> PCRE2 pattern translation (see regex_dialect.h).
#include "tokenizer/regex_dialect.h"

#include <cctype>

#include "core/error.h"

namespace llamaq {
namespace {

// Unicode White_Space, Oniguruma's \s (CR_Space in its unicode_property_data.c).
constexpr std::string_view kWhiteSpaceItems =
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";
constexpr std::string_view kHexDigitItems = "0-9a-fA-F";

class PatternTranslator {
 public:
  PatternTranslator(std::string_view pattern, std::string_view source)
      : pattern_(pattern), source_(source) {}

  std::string translate() {
    while (pos_ < pattern_.size()) {
      const char c = pattern_[pos_];
      if (c == '\\' && pos_ + 1 < pattern_.size()) {
        translate_escape(pattern_[pos_ + 1]);
        pos_ += 2;
        continue;
      }
      if (!in_class_ && c == '(' && pattern_.substr(pos_, 2) == "(?") check_inline_options();
      track_class(c);
      out_.push_back(c);
      ++pos_;
    }
    return std::move(out_);
  }

 private:
  [[noreturn]] void refuse(std::string_view what, std::string_view why) const {
    fail("{}: regex {} at offset {} is not supported: {}", source_, what, pos_, why);
  }

  void translate_escape(char escaped) {
    switch (escaped) {
      case 's':
        emit_class(kWhiteSpaceItems, false);
        return;
      case 'S':
        emit_class(kWhiteSpaceItems, true);
        return;
      case 'h':
        emit_class(kHexDigitItems, false);
        return;
      case 'H':
        emit_class(kHexDigitItems, true);
        return;
      case 'v':
        out_ += "\\x{0B}";
        return;
      case 'w':
      case 'W':
      case 'b':
      case 'B':
        refuse(std::string("\\") + escaped, "word characters differ between Oniguruma and PCRE2");
      case 'Q':
        refuse("\\Q", "quoting is not part of Ruby syntax");
      default:
        out_.push_back('\\');
        out_.push_back(escaped);
        class_has_member_ = true;
    }
  }

  void emit_class(std::string_view items, bool negated) {
    if (in_class_) {
      if (negated) refuse("negated class escape inside [...]", "cannot be expressed exactly");
      out_ += items;
    } else {
      out_ += negated ? "[^" : "[";
      out_ += items;
      out_ += "]";
    }
    class_has_member_ = true;
  }

  // Keeps track of [...] so that escapes inside classes are rewritten as class items. A ']' right
  // after '[' or '[^' is a literal member, as in both dialects.
  void track_class(char c) {
    if (!in_class_) {
      if (c == '[') {
        in_class_ = true;
        class_has_member_ = false;
        class_start_ = pos_;
      }
      return;
    }
    if (c == '^' && pos_ == class_start_ + 1) return;
    if (c == '[') refuse("nested character class", "set operations differ between the dialects");
    if (c == ']' && class_has_member_) {
      in_class_ = false;
      return;
    }
    class_has_member_ = true;
  }

  void check_inline_options() {
    for (size_t j = pos_ + 2; j < pattern_.size(); ++j) {
      const char option = pattern_[j];
      if (!std::isalpha(static_cast<unsigned char>(option)) && option != '-') return;
      if (option == 'm' || option == 's') {
        refuse(std::string("inline option '") + option + "'",
               "it differs between Oniguruma and PCRE2");
      }
    }
  }

  std::string_view pattern_;
  std::string_view source_;
  std::string out_;
  size_t pos_ = 0;
  bool in_class_ = false;
  bool class_has_member_ = false;
  size_t class_start_ = 0;
};

}  // namespace

std::string translate_oniguruma_pattern(std::string_view pattern, std::string_view source) {
  return PatternTranslator(pattern, source).translate();
}

}  // namespace llamaq
