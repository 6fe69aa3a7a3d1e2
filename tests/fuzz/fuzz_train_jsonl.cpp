// libFuzzer target: arbitrary bytes as one line of a training JSONL file, parsed into an example
// with the Llama 3 and the Llama 3.1 chat formats (tiny in-memory tokenizers, see
// tests/train/tiny_tokenizer.h). The only acceptable failure is llamaq::Error naming the line;
// any other exception, crash, sanitizer report or hang is a bug. A parsed example must have
// labels of its length, each label either -100 or its input id.
//
// Seeds: tests/fuzz/corpus/fuzz_train_jsonl/. In a normal build this file is linked with
// tests/fuzz/replay_main.cpp and the seeds run as a regression test.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "../train/tiny_tokenizer.h"
#include "core/error.h"
#include "train/dataset.h"

namespace {

const std::vector<llamaq::ExampleEncoder>& encoders() {
  static const std::vector<llamaq::ExampleEncoder> instances = [] {
    std::vector<llamaq::ExampleEncoder> list;
    for (const llamaq::KnownChatTemplate& known : llamaq::known_chat_templates()) {
      list.emplace_back(llamaq::test::tiny_tokenizer(&known));
    }
    list.emplace_back(llamaq::test::tiny_tokenizer(nullptr));  // Alpaca prompt, no chat
    return list;
  }();
  return instances;
}

void check(const llamaq::Example& example) {
  if (example.input_ids.size() != example.labels.size() || example.line != 7) std::abort();
  for (size_t i = 0; i < example.labels.size(); ++i) {
    const int32_t label = example.labels[i];
    if (label != llamaq::kIgnoreIndex && label != example.input_ids[i]) std::abort();
  }
  if (llamaq::count_loss_tokens(example.labels) == 0) std::abort();  // nothing to learn
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  for (const llamaq::ExampleEncoder& encoder : encoders()) {
    try {
      check(llamaq::parse_example_line(line, encoder, "fuzz.jsonl", 7));
    } catch (const llamaq::Error& error) {
      if (std::string_view(error.what()).substr(0, 13) != "fuzz.jsonl:7:") std::abort();
    }
  }
  return 0;
}
