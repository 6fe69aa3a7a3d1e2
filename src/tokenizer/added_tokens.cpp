// Added-token matching (see added_tokens.h). Candidates are bucketed by first byte and tried
// longest first, which gives aho-corasick's leftmost-longest result for the few hundred tokens
// real checkpoints have without building an automaton.
#include "tokenizer/added_tokens.h"

#include <algorithm>
#include <cstring>

#include "tokenizer/utf8_text.h"

namespace llamaq {
namespace {

// Start of the whitespace run that ends at `pos` (not before `floor`).
size_t skip_whitespace_left(std::string_view text, size_t pos, size_t floor) {
  while (pos > floor) {
    size_t start = pos - 1;
    while (start > floor && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80)
      --start;
    const std::string_view last = text.substr(start, pos - start);
    if (!is_unicode_white_space(decode_code_point(last, last.size()))) break;
    pos = start;
  }
  return pos;
}

// End of the whitespace run that starts at `pos` (not after `limit`).
size_t skip_whitespace_right(std::string_view text, size_t pos, size_t limit) {
  while (pos < limit) {
    const Utf8Sequence seq = classify_utf8_sequence(text.substr(pos, limit - pos));
    if (seq.kind != Utf8Sequence::Kind::kValid) break;
    if (!is_unicode_white_space(decode_code_point(text.substr(pos), seq.length))) break;
    pos += seq.length;
  }
  return pos;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) : tokens_(tokens) {
  for (uint32_t i = 0; i < tokens_.size(); ++i) {
    by_first_byte_[static_cast<unsigned char>(tokens_[i].content[0])].push_back(i);
  }
  for (auto& bucket : by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [&](uint32_t a, uint32_t b) {
      return tokens_[a].content.size() > tokens_[b].content.size();
    });
  }
}

const AddedToken* AddedTokenMatcher::longest_match(std::string_view text, size_t pos,
                                                   size_t end) const {
  for (const uint32_t index : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
    const std::string& content = tokens_[index].content;
    if (content.size() <= end - pos &&
        std::memcmp(text.data() + pos, content.data(), content.size()) == 0) {
      return &tokens_[index];
    }
  }
  return nullptr;
}

void AddedTokenMatcher::split(std::string_view text, size_t begin, size_t end, bool match_special,
                              std::vector<TextSegment>& out) const {
  size_t text_start = begin;  // start of the pending ordinary-text segment
  size_t pos = begin;
  while (pos < end) {
    const AddedToken* token = by_first_byte_[static_cast<unsigned char>(text[pos])].empty()
                                  ? nullptr
                                  : longest_match(text, pos, end);
    if (!token) {
      ++pos;
      continue;
    }
    size_t match_begin = pos;
    size_t match_end = pos + token->content.size();
    pos = match_end;
    if (token->special && !match_special) continue;  // its text stays ordinary text
    if (token->lstrip) match_begin = skip_whitespace_left(text, match_begin, text_start);
    if (token->rstrip) match_end = skip_whitespace_right(text, match_end, end);
    if (match_begin > text_start) out.push_back({text_start, match_begin, -1});
    out.push_back({match_begin, match_end, token->id});
    text_start = pos = match_end;
  }
  if (end > text_start) out.push_back({text_start, end, -1});
}

AddedVocabulary::AddedVocabulary(const std::vector<AddedToken>& tokens) {
  std::vector<AddedToken> raw;
  std::vector<AddedToken> normalized;
  for (const AddedToken& token : tokens) {
    (token.normalized ? normalized : raw).push_back(token);
    has_non_special_ = has_non_special_ || !token.special;
  }
  raw_ = AddedTokenMatcher(raw);
  normalized_ = AddedTokenMatcher(normalized);
}

void AddedVocabulary::split(std::string_view text, bool match_special,
                            std::vector<TextSegment>& out) const {
  if (normalized_.empty()) {
    raw_.split(text, 0, text.size(), match_special, out);
    return;
  }
  std::vector<TextSegment> first_pass;
  raw_.split(text, 0, text.size(), match_special, first_pass);
  for (const TextSegment& segment : first_pass) {
    if (segment.token_id >= 0) {
      out.push_back(segment);
    } else {
      normalized_.split(text, segment.begin, segment.end, match_special, out);
    }
  }
}

}  // namespace llamaq
