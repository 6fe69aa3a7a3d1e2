// Helpers shared by the training-data tests (train_test_support.h).
#include "train_test_support.h"

#include <map>
#include <mutex>

namespace llamaq::test {

const Tokenizer& real_tokenizer(const std::string& name) {
  static std::mutex mutex;
  static std::map<std::string, Tokenizer> cache;
  const std::lock_guard lock(mutex);
  auto it = cache.find(name);
  if (it == cache.end()) {
    it = cache.emplace(name, Tokenizer::from_model_dir(data_dir() / "tokenizers" / name)).first;
  }
  return it->second;
}

std::vector<std::string> trainable_spans(const Tokenizer& tokenizer, const Example& example) {
  std::vector<std::string> spans;
  std::vector<int32_t> run;
  for (size_t i = 0; i <= example.labels.size(); ++i) {
    if (i < example.labels.size() && example.labels[i] != kIgnoreIndex) {
      EXPECT_EQ(example.labels[i], example.input_ids[i]) << "label differs from its input id";
      run.push_back(example.labels[i]);
    } else if (!run.empty()) {
      spans.push_back(tokenizer.decode(run, /*skip_special=*/false));
      run.clear();
    }
  }
  return spans;
}

std::string masked_text(const Tokenizer& tokenizer, const Example& example) {
  std::vector<int32_t> masked;
  for (size_t i = 0; i < example.labels.size(); ++i) {
    if (example.labels[i] == kIgnoreIndex) masked.push_back(example.input_ids[i]);
  }
  return tokenizer.decode(masked, /*skip_special=*/false);
}

Example numbered_example(int32_t first_id, int64_t length) {
  Example example;
  for (int64_t i = 0; i < length; ++i) {
    example.input_ids.push_back(first_id + int32_t(i));
    example.labels.push_back(first_id + int32_t(i));
  }
  return example;
}

}  // namespace llamaq::test
