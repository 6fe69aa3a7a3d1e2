// A tiny Llama-3-layout tokenizer built in memory (byte-level BPE over the 256 byte symbols, a
// few merges, the Llama 3 special tokens at ids 300..305, the Llama 3 split regex) with any of
// the chat templates llamaq recognises. Loads in microseconds, so the fuzz target and the fast
// tests do not read the 9 MB real tokenizer. Header-only: the fuzz target is a single source.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "tokenizer/known_chat_templates.h"
#include "tokenizer/tokenizer.h"

namespace llamaq::test {

// GPT-2's bytes_to_unicode: the printable symbol byte-level BPE uses for byte b, as UTF-8.
inline std::string byte_level_symbol(int b) {
  const auto is_printable = [](int c) {
    return (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255);
  };
  int code_point = b;
  if (!is_printable(b)) {
    code_point = 256;
    for (int c = 0; c < b; ++c)
      code_point += is_printable(c) ? 0 : 1;
  }
  std::string utf8;
  if (code_point < 0x80) {
    utf8 += char(code_point);
  } else {
    utf8 += char(0xC0 | (code_point >> 6));
    utf8 += char(0x80 | (code_point & 0x3F));
  }
  return utf8;
}

inline nlohmann::json tiny_tokenizer_json() {
  using nlohmann::json;
  json vocab = json::object();
  for (int b = 0; b < 256; ++b)
    vocab[byte_level_symbol(b)] = b;
  json merges = json::array();
  int next_id = 256;
  const std::string space = byte_level_symbol(' ');
  for (const auto& [left, right] : {std::pair<std::string, std::string>{"h", "e"},
                                    {"l", "l"},
                                    {"t", "h"},
                                    {space, "t"},
                                    {space, "a"},
                                    {"i", "n"},
                                    {"e", "r"},
                                    {"o", "u"}}) {
    merges.push_back(left + " " + right);
    vocab[left + right] = next_id++;
  }
  json added = json::array();
  int id = 300;
  for (const char* name : {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                           "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"}) {
    added.push_back({{"id", id++},
                     {"content", name},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const std::string regex =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  return {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers", json::array({{{"type", "Split"},
                                        {"pattern", {{"Regex", regex}}},
                                        {"behavior", "Isolated"},
                                        {"invert", false}},
                                       {{"type", "ByteLevel"},
                                        {"add_prefix_space", false},
                                        {"trim_offsets", true},
                                        {"use_regex", false}}})}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array()},
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

// chat_template: one of known_chat_templates(), or nullptr for a tokenizer without one.
inline Tokenizer tiny_tokenizer(const KnownChatTemplate* chat_template) {
  nlohmann::json config = {{"bos_token", "<|begin_of_text|>"}, {"eos_token", "<|eot_id|>"}};
  if (chat_template) config["chat_template"] = std::string(chat_template->text);
  return Tokenizer::from_json(tiny_tokenizer_json().dump(), config.dump(), "tiny/tokenizer.json",
                              "tiny/tokenizer_config.json");
}

}  // namespace llamaq::test
