// Tokenizer encoding and decoding: UTF-8 check -> added-token split -> Split regex per text
// segment -> BPE per piece; decoding concatenates token bytes and decodes them as lossy UTF-8.
#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8_text.h"

namespace llamaq {

void Tokenizer::Impl::encode_into(std::string_view text, bool parse_special,
                                  std::vector<int32_t>& ids) const {
  BpeScratch scratch;
  const auto encode_text = [&](std::string_view segment) {
    splitter.split(segment, [&](size_t begin, size_t end) {
      definition.model.encode_piece(segment.substr(begin, end - begin), ids, scratch);
    });
  };
  if (added.empty() || (!parse_special && !added.has_non_special_tokens())) {
    encode_text(text);
    return;
  }
  std::vector<TextSegment> segments;
  added.split(text, parse_special, segments);
  for (const TextSegment& segment : segments) {
    if (segment.token_id >= 0) {
      ids.push_back(segment.token_id);
    } else {
      encode_text(text.substr(segment.begin, segment.end - segment.begin));
    }
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  if (const std::optional<size_t> bad = first_invalid_utf8_offset(text)) {
    fail("cannot tokenize: the text is not valid UTF-8 (ill-formed sequence at byte {} of {})",
         *bad, text.size());
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 4 + 1);
  impl_->encode_into(text, parse_special, ids);
  return ids;
}

std::vector<int32_t> Tokenizer::encode_with_bos(std::string_view text, bool parse_special) const {
  const TokenizerDefinition& definition = impl_->definition;
  std::vector<int32_t> ids;
  if (definition.has_template_processing) {
    ids = definition.template_prefix_ids;
  } else if (impl_->config_bos_id) {
    ids.push_back(*impl_->config_bos_id);
  }
  const std::vector<int32_t> body = encode(text, parse_special);
  ids.insert(ids.end(), body.begin(), body.end());
  if (definition.has_template_processing) {
    ids.insert(ids.end(), definition.template_suffix_ids.begin(),
               definition.template_suffix_ids.end());
  }
  return ids;
}

void Tokenizer::check_id(int32_t id) const {
  if (!impl_->is_token(id)) {
    fail("token id {} is not in the vocabulary (valid ids: 0..{})", id, vocab_size() - 1);
  }
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (const int32_t id : ids) {
    check_id(id);
    if (skip_special && impl_->is_special(id)) continue;
    bytes += impl_->definition.token_bytes[size_t(id)];
  }
  return utf8_lossy(bytes);
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  check_id(id);
  return impl_->definition.token_bytes[size_t(id)];
}

std::optional<int32_t> Tokenizer::find_token(std::string_view token) const {
  return impl_->find_token(token);
}

bool Tokenizer::is_special(int32_t id) const {
  check_id(id);
  return impl_->is_special(id);
}

int32_t Tokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->definition.token_flags.size());
}

std::optional<int32_t> Tokenizer::bos_id() const {
  const TokenizerDefinition& definition = impl_->definition;
  if (definition.has_template_processing) {
    if (definition.template_prefix_ids.empty()) return std::nullopt;
    return definition.template_prefix_ids.front();
  }
  return impl_->config_bos_id;
}

std::vector<int32_t> Tokenizer::stop_ids(std::span<const int32_t> config_eos_ids) const {
  std::vector<int32_t> stops;
  const auto add = [&](int32_t id) {
    if (std::find(stops.begin(), stops.end(), id) == stops.end()) stops.push_back(id);
  };
  for (const int32_t id : config_eos_ids) {
    check_id(id);
    add(id);
  }
  if (impl_->config_eos_id) add(*impl_->config_eos_id);
  for (const std::string_view name : {"<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"}) {
    if (const std::optional<int32_t> id = impl_->find_token(name)) add(*id);
  }
  return stops;
}

const ChatFormat* Tokenizer::chat_format() const {
  if (!impl_->chat_format_error.empty()) throw Error(impl_->chat_format_error);
  return impl_->chat_format ? &*impl_->chat_format : nullptr;
}

std::vector<int32_t> Tokenizer::encode_chat(std::span<const ChatMessage> messages,
                                            bool add_generation_prompt,
                                            const ChatRenderOptions& options) const {
  const ChatFormat* format = chat_format();
  if (!format) fail("this tokenizer has no chat template (tokenizer_config.json chat_template)");
  return format->encode(*this, messages, add_generation_prompt, options);
}

bool Tokenizer::regex_jit_compiled() const {
  return impl_->splitter.jit_compiled();
}

}  // namespace llamaq
