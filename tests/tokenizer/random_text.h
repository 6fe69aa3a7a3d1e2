// Seeded random Unicode strings for property tests: mixes of ASCII words, whitespace, digits,
// punctuation, accented Latin, Cyrillic, CJK, emoji (with ZWJ and modifiers), combining marks,
// controls, and arbitrary code points from every plane (never surrogates).
#pragma once

#include <random>
#include <string>

namespace llamaq::testing {

std::string random_unicode_string(std::mt19937& rng, size_t max_code_points);

}  // namespace llamaq::testing
