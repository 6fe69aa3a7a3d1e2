// UTF-8 helpers: lossy decoding matches Python's bytes.decode("utf-8", "replace") (expected
// strings below were printed by Python 3), validation offsets, and the two whitespace sets.
#include <gtest/gtest.h>

#include "tokenizer/utf8_text.h"

namespace llamaq {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";

TEST(Utf8Text, LossyDecodingReplacesMaximalSubparts) {
  EXPECT_EQ(utf8_lossy("\xE2\x82"
                       "A"),
            kFffd + "A");
  EXPECT_EQ(utf8_lossy("\xF0\x80\x80"), kFffd + kFffd + kFffd);
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), kFffd + kFffd + kFffd);              // surrogate
  EXPECT_EQ(utf8_lossy("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // > U+10FFFF
  EXPECT_EQ(utf8_lossy("\xE2\x82\xE2\x82\xAC"), kFffd + "\xE2\x82\xAC");
  EXPECT_EQ(utf8_lossy("\xC0\xAF"), kFffd + kFffd);  // overlong
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98"), kFffd);      // truncated at the end
  EXPECT_EQ(utf8_lossy("a\xFF\xFE"
                       "b"),
            "a" + kFffd + kFffd + "b");
  EXPECT_EQ(utf8_lossy("\xE0\x80\x80"), kFffd + kFffd + kFffd);
  EXPECT_EQ(utf8_lossy("\xF0\x90\x80"
                       "A"),
            kFffd + "A");
  EXPECT_EQ(utf8_lossy("plain \xC3\xA9 \xF0\x9F\x99\x82"), "plain \xC3\xA9 \xF0\x9F\x99\x82");
  EXPECT_EQ(utf8_lossy(std::string("\0x", 2)), std::string("\0x", 2));
}

TEST(Utf8Text, HoldingAnIncompleteTail) {
  std::string out;
  EXPECT_EQ(append_utf8_lossy("ab\xF0\x9F\x98", out, true), 2u);
  EXPECT_EQ(out, "ab");
  out.clear();
  EXPECT_EQ(append_utf8_lossy("ab\xF0\x80", out, true), 4u);  // ill-formed, not incomplete
  EXPECT_EQ(out, "ab" + kFffd + kFffd);
}

TEST(Utf8Text, FirstInvalidOffset) {
  EXPECT_EQ(first_invalid_utf8_offset(""), std::nullopt);
  EXPECT_EQ(first_invalid_utf8_offset("h\xC3\xA9llo"), std::nullopt);
  EXPECT_EQ(first_invalid_utf8_offset("abc\xFF"), 3u);
  EXPECT_EQ(first_invalid_utf8_offset("ab\xE2\x82"), 2u);
  EXPECT_EQ(first_invalid_utf8_offset("\xED\xA0\x80"), 0u);
}

TEST(Utf8Text, PythonStripMatchesStrStrip) {
  EXPECT_EQ(python_strip("\xE3\x80\x80\x1C hi \xC2\xA0\xE2\x80\xA8"), "hi");
  EXPECT_EQ(python_strip("\xE2\x80\x8B hi"), "\xE2\x80\x8B hi");  // U+200B is not whitespace
  EXPECT_EQ(python_strip("\xC2\x85x\xC2\x85"), "x");
  EXPECT_EQ(python_strip("\xE1\xA0\x8Ex"), "\xE1\xA0\x8Ex");  // U+180E neither
  EXPECT_EQ(python_strip(" \t\n "), "");
  EXPECT_EQ(python_strip("a b"), "a b");
}

TEST(Utf8Text, WhitespaceSets) {
  EXPECT_TRUE(is_python_whitespace(0x1C));
  EXPECT_FALSE(is_unicode_white_space(0x1C));
  for (const char32_t c : {0x09, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x200A, 0x2028, 0x3000}) {
    EXPECT_TRUE(is_unicode_white_space(c)) << std::hex << uint32_t(c);
  }
  EXPECT_FALSE(is_unicode_white_space(0x200B));
}

}  // namespace
}  // namespace llamaq
