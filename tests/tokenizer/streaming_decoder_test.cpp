// StreamingDecoder: output pieces are always complete UTF-8, and their concatenation equals the
// full decode (for random id sequences, including specials and tokens that split characters).
#include <gtest/gtest.h>

#include <random>

#include "random_text.h"
#include "tokenizer/streaming_decoder.h"
#include "tokenizer/utf8_text.h"
#include "tokenizer_test_support.h"

namespace llamaq::testing {
namespace {

// Pushes ids one by one; checks every piece is valid UTF-8 and at most 3 bytes are ever held.
std::string stream_decode(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool skip) {
  StreamingDecoder decoder(tokenizer, skip);
  std::string text;
  for (const int32_t id : ids) {
    const std::string piece = decoder.push(id);
    EXPECT_TRUE(is_valid_utf8_text(piece)) << "id " << id;
    EXPECT_LE(decoder.pending_bytes(), 3u);
    text += piece;
  }
  const std::string tail = decoder.finish();
  EXPECT_TRUE(is_valid_utf8_text(tail));
  EXPECT_EQ(decoder.pending_bytes(), 0u);
  return text + tail;
}

TEST(StreamingDecoder, EqualsFullDecodeOnRandomIdSequences) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> any_id(0, tokenizer.vocab_size() - 1);
  std::uniform_int_distribution<int32_t> byte_token(94, 187);  // single bytes 0xA1..0xFF
  size_t clean = 0;
  for (int round = 0; round < 2000; ++round) {
    std::vector<int32_t> ids(std::uniform_int_distribution<size_t>(1, 40)(rng));
    for (int32_t& id : ids)
      id = (rng() % 4 == 0) ? byte_token(rng) : any_id(rng);
    for (const bool skip : {false, true}) {
      const std::string full = tokenizer.decode(ids, skip);
      EXPECT_EQ(stream_decode(tokenizer, ids, skip), full);
      clean += full.find(kReplacementCharacter) == std::string::npos;
    }
  }
  EXPECT_GT(clean, 100u);  // many sequences decode without U+FFFD too
}

TEST(StreamingDecoder, MultibyteCharactersSplitAcrossTokensAreHeldUntilComplete) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  const std::string text = "emoji \xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD done";
  const std::vector<int32_t> ids = tokenizer.encode(text, false);
  ASSERT_EQ(ids, (std::vector<int32_t>{38623, 91416, 9468, 239, 235, 9468, 237, 121, 2884}));
  StreamingDecoder decoder(tokenizer, false);
  EXPECT_EQ(decoder.push(38623), "emoji");
  EXPECT_EQ(decoder.push(91416), " \xF0\x9F\x98\x80");
  EXPECT_EQ(decoder.push(9468), "");  // "\xF0\x9F": the start of a character is held
  EXPECT_EQ(decoder.pending_bytes(), 2u);
  EXPECT_EQ(decoder.push(239), "");
  EXPECT_EQ(decoder.push(235), "\xF0\x9F\x91\x8D");
  EXPECT_EQ(decoder.push(9468), "");
  EXPECT_EQ(decoder.push(237), "");
  EXPECT_EQ(decoder.push(121), "\xF0\x9F\x8F\xBD");
  EXPECT_EQ(decoder.push(2884), " done");
  EXPECT_EQ(decoder.finish(), "");
}

TEST(StreamingDecoder, RandomTextRoundTripsPieceByPiece) {
  const Tokenizer& tokenizer = real_tokenizer("llama3");
  std::mt19937 rng(11);
  for (int round = 0; round < 500; ++round) {
    const std::string text = random_unicode_string(rng, 60);
    EXPECT_EQ(stream_decode(tokenizer, tokenizer.encode(text, false), false), text);
  }
}

TEST(StreamingDecoder, FinishReplacesAnIncompleteCharacterLikeDecode) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  const std::vector<int32_t> ids = {9906, 9468};  // "Hello" "\xF0\x9F"
  StreamingDecoder decoder(tokenizer, false);
  std::string text = decoder.push(ids[0]);
  text += decoder.push(ids[1]);
  EXPECT_EQ(text, "Hello");
  text += decoder.finish();
  EXPECT_EQ(text, tokenizer.decode(ids, false));
  EXPECT_EQ(text, "Hello" + std::string(kReplacementCharacter));
  EXPECT_EQ(decoder.push(9906), "Hello");  // finish() reset the decoder
}

TEST(StreamingDecoder, SkipsSpecialTokensOnRequest) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  StreamingDecoder keep(tokenizer, false);
  StreamingDecoder skip(tokenizer, true);
  EXPECT_EQ(keep.push(128009), "<|eot_id|>");
  EXPECT_EQ(skip.push(128009), "");
}

TEST(StreamingDecoder, RejectsUnknownIdsWithoutLosingState) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  StreamingDecoder decoder(tokenizer, false);
  EXPECT_EQ(decoder.push(9468), "");
  EXPECT_THROW(decoder.push(128256), Error);
  EXPECT_THROW(decoder.push(-1), Error);
  EXPECT_EQ(decoder.pending_bytes(), 2u);
  EXPECT_EQ(decoder.push(239), "");
  EXPECT_EQ(decoder.push(235), "\xF0\x9F\x91\x8D");
}

}  // namespace
}  // namespace llamaq::testing
