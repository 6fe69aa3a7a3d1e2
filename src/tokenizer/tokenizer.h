// The Llama 3 tokenizer: loads a Hugging Face tokenizer.json (+ tokenizer_config.json) and
// encodes/decodes with exact parity to Hugging Face `tokenizers`/transformers (byte-level BPE,
// regex pre-tokenizer from the file, added/special tokens, ByteLevel decoding with U+FFFD for
// ill-formed UTF-8). Chat prompts: chat_format.h. Incremental decoding: streaming_decoder.h.
//
// A Tokenizer is immutable after loading and cheap to copy (shared state); all const methods
// may be called from several threads at once. Every failure a user can cause (bad files,
// unsupported tokenizer structure, invalid UTF-8 text, out-of-range ids) throws llamaq::Error
// with a message naming the file or input and the problem.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "tokenizer/chat_format.h"

namespace llamaq {

class Tokenizer {
 public:
  // tokenizer_config may be empty or name a file that does not exist (then there is no chat
  // template and no config BOS/EOS).
  static Tokenizer load(const std::filesystem::path& tokenizer_json,
                        const std::filesystem::path& tokenizer_config);
  // dir/tokenizer.json and, when present, dir/tokenizer_config.json.
  static Tokenizer from_model_dir(const std::filesystem::path& dir);
  // From JSON texts in memory (config_json may be empty). The names appear in error messages.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view config_json = {},
                             std::string_view json_name = "tokenizer.json",
                             std::string_view config_name = "tokenizer_config.json");

  // Token ids of text, without BOS. parse_special=true: added tokens written in the text
  // (e.g. "<|eot_id|>") become their ids, as Hugging Face does by default. false: special
  // tokens' text is ordinary text (HF split_special_tokens=True); use this for untrusted text.
  // Throws llamaq::Error when text is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool parse_special) const;

  // encode() wrapped in the post-processor's template, i.e. HF `tokenizer(text)` with
  // add_special_tokens=True: BOS first for Llama 3. For files without TemplateProcessing (early
  // Llama 3 revisions) the tokenizer_config.json bos_token is prepended instead, as Meta's
  // reference tokenizer does for prompts.
  std::vector<int32_t> encode_with_bos(std::string_view text, bool parse_special) const;

  // Text of ids as HF decode(ids, skip_special_tokens=skip_special) (no clean-up of spaces).
  // Ill-formed UTF-8 in the concatenated token bytes becomes U+FFFD (one per maximal subpart).
  // Throws llamaq::Error for an id that is not a token.
  std::string decode(std::span<const int32_t> ids, bool skip_special) const;

  // Raw bytes of one token (special tokens: their text). Throws for an id that is not a token.
  const std::string& token_bytes(int32_t id) const;

  // Id of a token by its Hugging Face spelling: an added token's content ("<|eot_id|>") or a
  // vocabulary entry as tokenizer.json writes it ("Ġhello").
  std::optional<int32_t> find_token(std::string_view token) const;

  // True for ids that decode(…, skip_special=true) drops (special added tokens).
  bool is_special(int32_t id) const;

  // One past the largest token id (the size an embedding table needs): 128256 for Llama 3.
  int32_t vocab_size() const;

  // The BOS id encode_with_bos() adds, if any (128000 <|begin_of_text|> for Llama 3).
  std::optional<int32_t> bos_id() const;

  // Ids that end generation: config_eos_ids (config.json / generation_config.json
  // eos_token_id), the tokenizer_config.json eos_token, and <|eot_id|>, <|end_of_text|>,
  // <|eom_id|> when the vocabulary has them. Deduplicated, in that order. Throws for a
  // config id that is not a token.
  std::vector<int32_t> stop_ids(std::span<const int32_t> config_eos_ids) const;

  // The checkpoint's chat format; nullptr when tokenizer_config.json has no chat_template.
  // Throws llamaq::Error when it has one that is not a supported format.
  const ChatFormat* chat_format() const;

  // chat_format()->encode(*this, …); throws llamaq::Error when there is no chat format.
  std::vector<int32_t> encode_chat(std::span<const ChatMessage> messages,
                                   bool add_generation_prompt,
                                   const ChatRenderOptions& options = {}) const;

  // True when the Split regex runs JIT-compiled (informational; results are identical).
  bool regex_jit_compiled() const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  void check_id(int32_t id) const;

  std::shared_ptr<const Impl> impl_;
};

}  // namespace llamaq
