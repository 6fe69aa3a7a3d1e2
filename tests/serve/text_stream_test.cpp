// Stop strings over streamed tokens: the text before the first stop string, never any of it,
// whatever the token boundaries; everything when no stop string appears.
#include <gtest/gtest.h>

#include "serve/text_stream.h"
#include "test_util.h"

namespace llamaq::serve {
namespace {

const Tokenizer& tokenizer() {
  static const Tokenizer t = Tokenizer::from_model_dir(test::model_dir("tiny-llama3-vocab"));
  return t;
}

struct Streamed {
  std::vector<std::string> pieces;
  std::string text;
  bool stopped = false;
  size_t tokens_used = 0;
};

Streamed stream(const std::string& text, std::vector<std::string> stop) {
  TextStream s(tokenizer(), std::move(stop));
  Streamed out;
  for (int32_t id : tokenizer().encode(text, false)) {
    if (s.stopped()) break;
    ++out.tokens_used;
    out.pieces.push_back(s.push(id));
  }
  out.pieces.push_back(s.finish());
  for (const std::string& p : out.pieces)
    out.text += p;
  out.stopped = s.stopped();
  return out;
}

TEST(TextStream, WithoutStopStringsEverythingComesThrough) {
  const std::string text = "Hello world, this is a test of streaming. Ünïcödé too: 日本語";
  const Streamed s = stream(text, {});
  EXPECT_EQ(s.text, text);
  EXPECT_FALSE(s.stopped);
}

TEST(TextStream, CutsAtTheFirstStopStringAcrossTokenBoundaries) {
  const std::string text = "Hello world, this is a test of streaming.";
  for (const std::string stop : {"is a", "world", "lo w", ".", "g."}) {
    const Streamed s = stream(text, {"never", stop});
    EXPECT_EQ(s.text, text.substr(0, text.find(stop))) << stop;
    EXPECT_TRUE(s.stopped) << stop;
    // No piece sent before the stop was found contains part of the stop string's text.
    for (size_t i = 0; i + 1 < s.pieces.size(); ++i) {
      EXPECT_EQ(s.pieces[i].find(stop), std::string::npos);
    }
  }
}

TEST(TextStream, HeldBackPrefixIsReleasedWhenItTurnsOutNotToBeAStop) {
  // "tes" could start "test!", so it is held until "t" + "." shows it is not.
  const Streamed s = stream("a test.", {"test!"});
  EXPECT_EQ(s.text, "a test.");
  EXPECT_FALSE(s.stopped);
  // At the end of generation a held-back prefix goes out.
  const Streamed end = stream("a tes", {"test!"});
  EXPECT_EQ(end.text, "a tes");
}

TEST(TextStream, EarliestStopWins) {
  const Streamed s = stream("one two three", {"three", "two"});
  EXPECT_EQ(s.text, "one ");
}

}  // namespace
}  // namespace llamaq::serve
