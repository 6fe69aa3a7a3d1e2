// Reading tokenizer.json (the Hugging Face `tokenizers` serialization) into the parts the
// engine runs: the BPE model over raw bytes, the added tokens, the Split regex, the per-id bytes
// the ByteLevel decoder yields, and the post-processor's template (BOS). Only the structure
// Llama 3 checkpoints use is accepted; anything else that would change the ids (a normalizer,
// another model type or pre-tokenizer, byte_fallback, dropout, subword prefixes...) is refused
// with an error naming the file and field rather than being tokenized differently.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe_model.h"

namespace llamaq {

// Ids are indexes into flat per-id tables; this bound keeps a hostile file from making the
// loader allocate gigabytes (Llama 3 has 128,256 tokens; the largest public vocabularies are
// below 300k).
inline constexpr int64_t kMaxTokenId = (int64_t{1} << 20) - 1;

struct TokenizerDefinition {
  enum TokenFlags : uint8_t { kAssigned = 1, kSpecial = 2, kAdded = 4 };

  std::string split_pattern;
  BpeModel model;
  std::vector<AddedToken> added_tokens;
  std::vector<std::string> token_bytes;  // per id: the bytes decoding yields
  std::vector<uint8_t> token_flags;      // per id: TokenFlags
  // Token strings (Hugging Face token_to_id spelling) that cannot be found through the model's
  // byte map: added tokens' contents, and vocab entries outside the byte-level alphabet.
  std::vector<std::pair<std::string, int32_t>> extra_token_strings;
  bool has_template_processing = false;
  std::vector<int32_t> template_prefix_ids;  // before the text ("single" template)
  std::vector<int32_t> template_suffix_ids;  // after the text
};

// source is used in error messages (normally the file path).
TokenizerDefinition parse_tokenizer_json(std::string_view json_text, std::string_view source);

}  // namespace llamaq
