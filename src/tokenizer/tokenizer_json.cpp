// tokenizer.json reader (see tokenizer_json.h). The parser checks each section against what the
// engine implements and builds raw-byte tables from the byte-level strings of the file.
#include "tokenizer/tokenizer_json.h"

#include <algorithm>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/json_fields.h"

namespace llamaq {
namespace {

// Lets the vocabulary map be searched with string_view keys (no temporary strings per merge).
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
};

class TokenizerJsonParser {
 public:
  explicit TokenizerJsonParser(std::string_view source) : fields_(std::string(source)) {}

  TokenizerDefinition parse(std::string_view text) {
    const Json document = parse_json_document(text, fields_.source());
    fields_.expect_object(document, "");
    if (JsonFields::optional(document, "normalizer")) {
      refuse("normalizer",
             "a normalizer is not supported (Llama 3 files have \"normalizer\": null)");
    }
    parse_model(fields_.required(document, "", "model"));
    if (const Json* added = JsonFields::optional(document, "added_tokens"))
      parse_added_tokens(*added);
    parse_pre_tokenizer(fields_.required(document, "", "pre_tokenizer"));
    parse_decoder(fields_.required(document, "", "decoder"));
    if (const Json* post = JsonFields::optional(document, "post_processor")) {
      parse_post_processor(*post, "post_processor");
    }
    build_token_tables();
    return std::move(definition_);
  }

 private:
  [[noreturn]] void refuse(std::string_view path, std::string_view why) const {
    fields_.fail_at(path, fmt::format("is unsupported: {}", why));
  }

  std::string_view type_of(const Json& component, std::string_view path) const {
    return fields_.string_value(fields_.required(component, path, "type"),
                                JsonFields::join(path, "type"));
  }

  int32_t parse_id(const Json& value, std::string_view path) const {
    const int64_t id = fields_.integer_value(value, path);
    if (id < 0 || id > kMaxTokenId) {
      fields_.fail_at(path,
                      fmt::format("is {}, outside the supported id range 0..{}", id, kMaxTokenId));
    }
    return static_cast<int32_t>(id);
  }

  // ---- model ----------------------------------------------------------------------------

  void parse_model(const Json& model) {
    fields_.expect_object(model, "model");
    const std::string_view type = type_of(model, "model");
    if (type != "BPE")
      refuse("model.type", fmt::format("model type \"{}\" (only BPE is implemented)", type));
    parse_vocab(fields_.required(model, "model", "vocab"));
    parse_merges(fields_.required(model, "model", "merges"));
    parse_bpe_options(model);
  }

  void parse_vocab(const Json& vocab) {
    fields_.expect_object(vocab, "model.vocab");
    vocab_ids_.reserve(vocab.size());
    for (const auto& [token, value] : vocab.items()) {
      const int32_t id = parse_id(value, "model.vocab[\"" + token + "\"]");
      const auto [entry, inserted] = vocab_ids_.emplace(token, id);
      if (!inserted) continue;  // JSON objects have unique keys
      if (vocab_string_of_id_.size() <= size_t(id)) vocab_string_of_id_.resize(size_t(id) + 1);
      if (vocab_string_of_id_[size_t(id)]) {
        fields_.fail_at("model.vocab", fmt::format("maps two tokens to id {}", id));
      }
      vocab_string_of_id_[size_t(id)] = &entry->first;
      if (const std::optional<std::string> bytes = byte_level_to_bytes(token);
          bytes && !bytes->empty()) {
        definition_.model.add_token(*bytes, id);
      }
    }
  }

  int32_t merge_part_id(std::string_view part, size_t index) const {
    const auto it = vocab_ids_.find(part);
    if (it == vocab_ids_.end()) {
      fields_.fail_at(fmt::format("model.merges[{}]", index),
                      fmt::format("uses token \"{}\", which is not in model.vocab", part));
    }
    return it->second;
  }

  void parse_merges(const Json& merges) {
    fields_.expect_array(merges, "model.merges");
    if (merges.size() > size_t(INT32_MAX)) fields_.fail_at("model.merges", "has too many entries");
    definition_.model.reserve_merges(merges.size());
    std::string merged;
    for (size_t i = 0; i < merges.size(); ++i) {
      const auto [left, right] = merge_parts(merges[i], i);
      const int32_t left_id = merge_part_id(left, i);
      const int32_t right_id = merge_part_id(right, i);
      merged.assign(left).append(right);
      const int32_t merged_id = merge_part_id(merged, i);
      definition_.model.add_merge(left_id, right_id, merged_id, static_cast<int32_t>(i));
    }
  }

  // A merge is "left right" (one space) or ["left", "right"].
  std::pair<std::string_view, std::string_view> merge_parts(const Json& merge, size_t index) const {
    const std::string path = fmt::format("model.merges[{}]", index);
    if (merge.is_string()) {
      const std::string& text = merge.get_ref<const std::string&>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        fields_.fail_at(path, "must be two tokens separated by one space");
      }
      return {std::string_view(text).substr(0, space), std::string_view(text).substr(space + 1)};
    }
    if (!merge.is_array() || merge.size() != 2) {
      fields_.fail_at(path, "must be a \"left right\" string or a [left, right] pair");
    }
    return {fields_.string_value(merge[0], path + "[0]"),
            fields_.string_value(merge[1], path + "[1]")};
  }

  void parse_bpe_options(const Json& model) {
    if (const Json* dropout = JsonFields::optional(model, "dropout")) {
      if (!dropout->is_number() || dropout->get<double>() != 0.0) {
        refuse("model.dropout", "BPE dropout makes tokenization random");
      }
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (!fields_.optional_string(model, "model", key).empty()) {
        refuse(JsonFields::join("model", key), "subword prefixes/suffixes are not implemented");
      }
    }
    if (fields_.optional_bool(model, "model", "byte_fallback", false)) {
      refuse("model.byte_fallback",
             "byte fallback (SentencePiece-style <0x..> tokens) is not implemented");
    }
    BpeOptions options;
    options.ignore_merges = fields_.optional_bool(model, "model", "ignore_merges", false);
    options.fuse_unk = fields_.optional_bool(model, "model", "fuse_unk", false);
    const std::string unk = fields_.optional_string(model, "model", "unk_token");
    if (!unk.empty() || JsonFields::optional(model, "unk_token")) {
      const auto it = vocab_ids_.find(std::string_view(unk));
      if (it == vocab_ids_.end()) fields_.fail_at("model.unk_token", "is not in model.vocab");
      options.unk_id = it->second;
    }
    definition_.model.set_options(options);
  }

  // ---- added tokens -----------------------------------------------------------------------

  void parse_added_tokens(const Json& added) {
    fields_.expect_array(added, "added_tokens");
    std::unordered_set<std::string> contents;
    for (size_t i = 0; i < added.size(); ++i) {
      const std::string path = fmt::format("added_tokens[{}]", i);
      const Json& entry = added[i];
      AddedToken token;
      token.id = parse_id(fields_.required(entry, path, "id"), path + ".id");
      token.content =
          fields_.string_value(fields_.required(entry, path, "content"), path + ".content");
      if (token.content.empty()) fields_.fail_at(path + ".content", "must not be empty");
      if (!contents.insert(token.content).second) {
        fields_.fail_at(path + ".content", fmt::format("\"{}\" appears twice", token.content));
      }
      token.special = fields_.optional_bool(entry, path, "special", false);
      token.lstrip = fields_.optional_bool(entry, path, "lstrip", false);
      token.rstrip = fields_.optional_bool(entry, path, "rstrip", false);
      token.normalized = fields_.optional_bool(entry, path, "normalized", !token.special);
      if (fields_.optional_bool(entry, path, "single_word", false)) {
        refuse(path + ".single_word", "single_word added tokens are not implemented");
      }
      definition_.added_tokens.push_back(std::move(token));
    }
  }

  // ---- pre-tokenizer, decoder, post-processor ---------------------------------------------

  void parse_pre_tokenizer(const Json& pre) {
    const char* expected =
        "only Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)] "
        "(the Llama 3 pre-tokenizer) is implemented";
    if (pre.is_null() || type_of(pre, "pre_tokenizer") != "Sequence")
      refuse("pre_tokenizer", expected);
    const Json& steps = fields_.required(pre, "pre_tokenizer", "pretokenizers");
    fields_.expect_array(steps, "pre_tokenizer.pretokenizers");
    if (steps.size() != 2) refuse("pre_tokenizer.pretokenizers", expected);
    parse_split(steps[0], "pre_tokenizer.pretokenizers[0]");
    parse_byte_level_pre_tokenizer(steps[1], "pre_tokenizer.pretokenizers[1]");
  }

  void parse_split(const Json& split, const std::string& path) {
    if (type_of(split, path) != "Split") refuse(path, "the first pre-tokenizer must be Split");
    const Json& pattern = fields_.required(split, path, "pattern");
    fields_.expect_object(pattern, path + ".pattern");
    const Json* regex = JsonFields::optional(pattern, "Regex");
    if (!regex) refuse(path + ".pattern", "only {\"Regex\": ...} patterns are implemented");
    definition_.split_pattern = fields_.string_value(*regex, path + ".pattern.Regex");
    const std::string& behavior =
        fields_.string_value(fields_.required(split, path, "behavior"), path + ".behavior");
    if (behavior != "Isolated") refuse(path + ".behavior", "only \"Isolated\" is implemented");
    if (fields_.optional_bool(split, path, "invert", false))
      refuse(path + ".invert", "must be false");
  }

  void parse_byte_level_pre_tokenizer(const Json& step, const std::string& path) {
    if (type_of(step, path) != "ByteLevel")
      refuse(path, "the second pre-tokenizer must be ByteLevel");
    if (fields_.optional_bool(step, path, "add_prefix_space", true)) {
      refuse(path + ".add_prefix_space", "must be false");
    }
    if (fields_.optional_bool(step, path, "use_regex", true)) {
      refuse(path + ".use_regex", "must be false (the Split step does the splitting)");
    }
  }

  void parse_decoder(const Json& decoder) {
    if (decoder.is_null() || type_of(decoder, "decoder") != "ByteLevel") {
      refuse("decoder", "only the ByteLevel decoder is implemented");
    }
  }

  void parse_post_processor(const Json& processor, const std::string& path) {
    const std::string_view type = type_of(processor, path);
    if (type == "ByteLevel") return;  // adjusts offsets only, never ids
    if (type == "TemplateProcessing") {
      if (definition_.has_template_processing) refuse(path, "more than one TemplateProcessing");
      parse_template_processing(processor, path);
      return;
    }
    if (type == "Sequence") {
      const Json& steps = fields_.required(processor, path, "processors");
      fields_.expect_array(steps, path + ".processors");
      for (size_t i = 0; i < steps.size(); ++i) {
        parse_post_processor(steps[i], fmt::format("{}.processors[{}]", path, i));
      }
      return;
    }
    refuse(path, fmt::format("post-processor type \"{}\"", type));
  }

  // "single": [{"SpecialToken": {"id": "<|begin_of_text|>"}}, {"Sequence": {"id": "A"}}, ...]
  void parse_template_processing(const Json& processor, const std::string& path) {
    definition_.has_template_processing = true;
    const Json& single = fields_.required(processor, path, "single");
    fields_.expect_array(single, path + ".single");
    const Json& special_tokens = fields_.required(processor, path, "special_tokens");
    bool seen_sequence = false;
    for (size_t i = 0; i < single.size(); ++i) {
      const std::string item_path = fmt::format("{}.single[{}]", path, i);
      fields_.expect_object(single[i], item_path);
      if (const Json* sequence = JsonFields::optional(single[i], "Sequence")) {
        const std::string& which = fields_.string_value(
            fields_.required(*sequence, item_path + ".Sequence", "id"), item_path + ".Sequence.id");
        if (which != "A" || seen_sequence)
          refuse(item_path, "the single template must contain sequence A once");
        seen_sequence = true;
        continue;
      }
      const Json* special = JsonFields::optional(single[i], "SpecialToken");
      if (!special) refuse(item_path, "template items must be Sequence or SpecialToken");
      const std::string& name =
          fields_.string_value(fields_.required(*special, item_path + ".SpecialToken", "id"),
                               item_path + ".SpecialToken.id");
      append_template_ids(
          special_tokens, path + ".special_tokens", name,
          seen_sequence ? definition_.template_suffix_ids : definition_.template_prefix_ids);
    }
    if (!seen_sequence) refuse(path + ".single", "the single template has no sequence A");
  }

  void append_template_ids(const Json& special_tokens, const std::string& path,
                           const std::string& name, std::vector<int32_t>& out) const {
    const Json& entry = fields_.required(special_tokens, path, name);
    const std::string entry_path = JsonFields::join(path, name);
    const Json& ids = fields_.required(entry, entry_path, "ids");
    fields_.expect_array(ids, entry_path + ".ids");
    for (size_t i = 0; i < ids.size(); ++i)
      out.push_back(parse_id(ids[i], fmt::format("{}.ids[{}]", entry_path, i)));
  }

  // ---- per-id tables -----------------------------------------------------------------------

  void build_token_tables() {
    size_t table_size = vocab_string_of_id_.size();
    for (const AddedToken& token : definition_.added_tokens)
      table_size = std::max(table_size, size_t(token.id) + 1);
    definition_.token_bytes.assign(table_size, std::string());
    definition_.token_flags.assign(table_size, 0);
    std::unordered_set<std::string_view> special_contents;
    for (const AddedToken& token : definition_.added_tokens) {
      if (token.special) special_contents.insert(token.content);
    }
    for (size_t id = 0; id < vocab_string_of_id_.size(); ++id) {
      if (!vocab_string_of_id_[id]) continue;
      const std::string& token = *vocab_string_of_id_[id];
      set_token(id, token, special_contents.count(token) ? TokenizerDefinition::kSpecial : 0);
      if (!byte_level_to_bytes(token))
        definition_.extra_token_strings.emplace_back(token, int32_t(id));
    }
    for (const AddedToken& token : definition_.added_tokens) {  // added tokens win, as in HF
      set_token(size_t(token.id), token.content,
                TokenizerDefinition::kAdded | (token.special ? TokenizerDefinition::kSpecial : 0));
      definition_.extra_token_strings.emplace_back(token.content, token.id);
    }
    for (const int32_t id : definition_.template_prefix_ids)
      check_assigned(id, "post_processor");
    for (const int32_t id : definition_.template_suffix_ids)
      check_assigned(id, "post_processor");
  }

  // Hugging Face's ByteLevel decoder maps a token's characters back to bytes, or keeps the
  // token's own UTF-8 when a character is outside the byte-level alphabet.
  void set_token(size_t id, const std::string& token_string, uint8_t flags) {
    std::optional<std::string> bytes = byte_level_to_bytes(token_string);
    definition_.token_bytes[id] = bytes ? std::move(*bytes) : token_string;
    definition_.token_flags[id] = TokenizerDefinition::kAssigned | flags;
  }

  void check_assigned(int32_t id, std::string_view path) const {
    if (size_t(id) >= definition_.token_flags.size() || !definition_.token_flags[size_t(id)]) {
      fields_.fail_at(path, fmt::format("uses id {}, which is not a token", id));
    }
  }

  JsonFields fields_;
  TokenizerDefinition definition_;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> vocab_ids_;
  std::vector<const std::string*> vocab_string_of_id_;  // keys of vocab_ids_ (stable nodes)
};

}  // namespace

TokenizerDefinition parse_tokenizer_json(std::string_view json_text, std::string_view source) {
  try {
    return TokenizerJsonParser(source).parse(json_text);
  } catch (const Json::exception& e) {  // a shape the checks above did not anticipate
    fail("{}: unexpected structure: {}", source, e.what());
  }
}

}  // namespace llamaq
