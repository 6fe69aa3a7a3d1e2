// Translation of a tokenizer.json Split regex from the dialect Hugging Face runs it in
// (Oniguruma, Ruby syntax, UTF-8) to an equivalent PCRE2 pattern.
//
// The two engines agree on nearly everything byte-level BPE patterns use; where they differ the
// pattern is rewritten to Oniguruma's meaning or refused:
//   \s, \S  Oniguruma: exactly Unicode White_Space. PCRE2 (UCP) also matches U+180E, so they
//           become explicit classes ([...] / [^...]); \S inside a class is refused.
//   \h, \H  Oniguruma: hex digit. PCRE2: horizontal space. Rewritten to [0-9a-fA-F] / [^...].
//   \v      Oniguruma: U+000B only. PCRE2: any vertical space. Rewritten to \x{0B}.
//   \w \W \b \B  word characters differ (marks, connector punctuation): refused.
//   (?m) (?s)    Ruby's (?m) is PCRE2's (?s); refused rather than guessed.
// `^`/`$` are line anchors in Ruby syntax: the pattern is compiled with PCRE2_MULTILINE.
#pragma once

#include <string>
#include <string_view>

namespace llamaq {

// Returns the PCRE2 pattern; throws llamaq::Error naming source for refused constructs.
std::string translate_oniguruma_pattern(std::string_view pattern, std::string_view source);

}  // namespace llamaq
