// libFuzzer target: arbitrary bytes as tokenizer.json (optionally followed by a NUL byte and a
// tokenizer_config.json). When loading succeeds, a fixed text is encoded (special tokens on and
// off, with BOS), decoded in full and as a stream, and, when the config has a supported chat
// template, a small conversation is encoded. The only acceptable failure is llamaq::Error: any
// other exception, crash, sanitizer report or hang is a bug.
//
// Seeds: tests/fuzz/corpus/fuzz_tokenizer_json/ (small hand-made tokenizers in the Llama 3
// layout). In a normal build this file is linked with tests/fuzz/replay_main.cpp and the seeds
// run as a regression test.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "tokenizer/streaming_decoder.h"
#include "tokenizer/tokenizer.h"

namespace {

constexpr std::string_view kText =
    "Hello, world! I'm <|eot_id|> na\xC3\xAFve caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC "
    "\xF0\x9F\x98\x80 12345 \n\n  x<|begin_of_text|>  \t";

void exercise(const llamaq::Tokenizer& tokenizer) {
  for (const bool parse_special : {true, false}) {
    const std::vector<int32_t> ids = tokenizer.encode(kText, parse_special);
    static_cast<void>(tokenizer.decode(ids, false));
    static_cast<void>(tokenizer.decode(ids, true));
    llamaq::StreamingDecoder stream(tokenizer, !parse_special);
    for (const int32_t id : ids)
      static_cast<void>(stream.push(id));
    static_cast<void>(stream.finish());
  }
  static_cast<void>(tokenizer.encode_with_bos(kText, true));
  static_cast<void>(tokenizer.stop_ids({}));
  static_cast<void>(tokenizer.find_token("<|eot_id|>"));
  if (const llamaq::ChatFormat* format = tokenizer.chat_format()) {
    const std::vector<llamaq::ChatMessage> messages = {{"system", " Be brief. "},
                                                       {"user", "Hi <|eot_id|>"}};
    static_cast<void>(format->encode(tokenizer, messages, true));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t separator = input.find('\0');
  const std::string_view json = input.substr(0, separator);
  const std::string_view config =
      separator == std::string_view::npos ? std::string_view() : input.substr(separator + 1);
  try {
    exercise(llamaq::Tokenizer::from_json(json, config, "fuzz/tokenizer.json",
                                          "fuzz/tokenizer_config.json"));
  } catch (const llamaq::Error&) {
    // Rejected input with a clear message: fine.
  }
  return 0;
}
