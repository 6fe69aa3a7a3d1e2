// Helpers shared by the training-data tests: the real Llama 3 tokenizers (loaded once per
// process), decoding the trainable parts of an example, and hand-made examples.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/dataset.h"

namespace llamaq::test {

// tests/data/tokenizers/<name> ("llama3": early Llama 3 Instruct template, "llama3_1").
const Tokenizer& real_tokenizer(const std::string& name);

inline std::filesystem::path train_data_dir() {
  return data_dir() / "train";
}

// Each run of consecutive positions with a label, decoded with special tokens kept.
std::vector<std::string> trainable_spans(const Tokenizer& tokenizer, const Example& example);

// The decoded text of the positions without a label.
std::string masked_text(const Tokenizer& tokenizer, const Example& example);

// An example of `length` tokens with ids first_id, first_id + 1, ...; all positions trainable.
Example numbered_example(int32_t first_id, int64_t length);

}  // namespace llamaq::test
