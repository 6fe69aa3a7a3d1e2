// Test helpers (see tokenizer_test_support.h).
#include "tokenizer_test_support.h"

#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "tokenizer/byte_level.h"

namespace llamaq::testing {

std::filesystem::path tokenizer_data_dir() {
  return std::filesystem::path(LLAMAQ_TEST_DATA_DIR) / "tokenizers";
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  std::ostringstream contents;
  contents << in.rdbuf();
  return std::move(contents).str();
}

const Tokenizer& real_tokenizer(std::string_view name) {
  static std::mutex mutex;
  static std::map<std::string, Tokenizer, std::less<>> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(name);
  if (it == cache.end()) {
    it = cache.emplace(std::string(name), Tokenizer::from_model_dir(tokenizer_data_dir() / name))
             .first;
  }
  return it->second;
}

const nlohmann::json& reference_cases(std::string_view name) {
  static std::mutex mutex;
  static std::map<std::string, nlohmann::json, std::less<>> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(name);
  if (it == cache.end()) {
    const auto path = tokenizer_data_dir() / "reference" / (std::string(name) + "-public.json");
    it = cache.emplace(std::string(name), nlohmann::json::parse(read_file(path))).first;
  }
  return it->second;
}

nlohmann::json small_tokenizer_json() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) {
    vocab[bytes_to_byte_level(std::string(1, static_cast<char>(b)))] = b;
  }
  const char* merged[] = {"he",  "hel", "hell", "hello", "Ġw",
                          "Ġwo", "or",  "Ġwor", "Ġworl", "Ġworld"};
  // Consistent merges: every merged token except "Ġwo" is reachable from its bytes.
  const char* merges[] = {"h e", "he l",  "hel l",  "hell o", "o r",
                          "Ġ w", "Ġw or", "Ġwor l", "Ġworl d"};
  int next_id = 256;
  for (const char* token : merged)
    vocab[token] = next_id++;
  nlohmann::json added = nlohmann::json::array();
  const auto special = [](const char* content, int id) {
    return nlohmann::json{{"id", id},        {"content", content}, {"single_word", false},
                          {"lstrip", false}, {"rstrip", false},    {"normalized", false},
                          {"special", true}};
  };
  added.push_back(special("<|begin_of_text|>", 300));
  added.push_back(special("<|eot_id|>", 301));
  const std::string regex =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
      "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  return nlohmann::json{
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", regex}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", true},
           {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair", nlohmann::json::array()},
        {"special_tokens",
         {{"<|begin_of_text|>",
           {{"id", "<|begin_of_text|>"}, {"ids", {300}}, {"tokens", {"<|begin_of_text|>"}}}}}}}},
      {"decoder",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", true},
        {"vocab", vocab},
        {"merges", merges}}}};
}

Tokenizer load_small(const nlohmann::json& tokenizer_json, const std::string& config_json) {
  return Tokenizer::from_json(tokenizer_json.dump(), config_json, "small/tokenizer.json",
                              "small/tokenizer_config.json");
}

}  // namespace llamaq::testing
