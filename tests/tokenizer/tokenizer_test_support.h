// Shared helpers for the tokenizer tests: fixture paths, the two real Llama 3 tokenizers
// (loaded once per test process), and a small hand-made tokenizer.json for feature and error
// tests that do not need the 9 MB vocabulary.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <string_view>

#include "tokenizer/tokenizer.h"

namespace llamaq::testing {

std::filesystem::path tokenizer_data_dir();  // tests/data/tokenizers
std::string read_file(const std::filesystem::path& path);

// "llama3" or "llama3_1": tests/data/tokenizers/<name>/ loaded once.
const Tokenizer& real_tokenizer(std::string_view name);
// tests/data/tokenizers/reference/<name>-public.json
const nlohmann::json& reference_cases(std::string_view name);

// A tiny byte-level BPE tokenizer.json in the Llama 3 layout: all 256 byte tokens, a few
// merges ("h e", "he l", "hel l", "hell o", "o r", "Ġ w", ...), <|begin_of_text|> (id 300) and
// <|eot_id|> (id 301) as special added tokens, and TemplateProcessing adding BOS.
nlohmann::json small_tokenizer_json();
Tokenizer load_small(const nlohmann::json& tokenizer_json, const std::string& config_json = "");

// EXPECT_CONTAINS(text, part): text (evaluated once) contains part.
inline ::testing::AssertionResult text_contains(const char* text_expression, const char*,
                                                const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << text_expression << " is\n  " << text << "\nwhich does not contain\n  " << part;
}
#define EXPECT_CONTAINS(text, part) \
  EXPECT_PRED_FORMAT2(::llamaq::testing::text_contains, text, part)

}  // namespace llamaq::testing
