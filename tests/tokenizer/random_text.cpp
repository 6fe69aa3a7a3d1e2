// Random Unicode test strings (see random_text.h).
#include "random_text.h"

#include "tokenizer/utf8_text.h"

namespace llamaq::testing {
namespace {

struct Pool {
  char32_t first;
  char32_t last;
};

constexpr Pool kPools[] = {
    {'a', 'z'},       {'A', 'Z'},         {'0', '9'},         {' ', ' '},       {'\t', '\r'},
    {'!', '/'},       {':', '@'},         {0xC0, 0x17F},      {0x400, 0x44F},   {0x4E00, 0x4FFF},
    {0x3040, 0x30FF}, {0x1F600, 0x1F64F}, {0x1F3FB, 0x1F3FF}, {0x200D, 0x200D}, {0x300, 0x36F},
    {0x0, 0x1F},      {0x80, 0xBF},       {0x2000, 0x206F},   {0xAC00, 0xD7A3}, {0x10000, 0x10FFFF},
};

char32_t random_code_point(std::mt19937& rng, const Pool& pool) {
  const char32_t c = std::uniform_int_distribution<char32_t>(pool.first, pool.last)(rng);
  return (c >= 0xD800 && c <= 0xDFFF) ? char32_t('x') : c;
}

}  // namespace

std::string random_unicode_string(std::mt19937& rng, size_t max_code_points) {
  const size_t length = std::uniform_int_distribution<size_t>(0, max_code_points)(rng);
  std::string text;
  size_t count = 0;
  while (count < length) {
    // Runs from one pool, like words, so the pre-tokenizer sees realistic pieces.
    const Pool& pool = kPools[std::uniform_int_distribution<size_t>(0, std::size(kPools) - 1)(rng)];
    const size_t run = std::uniform_int_distribution<size_t>(1, 8)(rng);
    for (size_t i = 0; i < run && count < length; ++i, ++count) {
      append_code_point(random_code_point(rng, pool), text);
    }
  }
  return text;
}

}  // namespace llamaq::testing
