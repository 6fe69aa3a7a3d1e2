// UTF-8 classification after the Unicode table of well-formed byte sequences (Table 3-7); see the
// header for why this is hand-written.
#include "tokenizer/utf8_text.h"

#include <cstdint>

namespace llamaq {
namespace {

struct ByteRange {
  uint8_t low;
  uint8_t high;
};

// Allowed range of the second byte for a lead byte (later continuation bytes are 80..BF), and
// the total length. Length 0 marks a byte that can never start a sequence.
struct LeadByteRule {
  size_t length;
  ByteRange second;
};

LeadByteRule lead_byte_rule(uint8_t lead) {
  if (lead < 0x80) return {1, {0, 0}};
  if (lead >= 0xC2 && lead <= 0xDF) return {2, {0x80, 0xBF}};
  if (lead == 0xE0) return {3, {0xA0, 0xBF}};
  if (lead == 0xED) return {3, {0x80, 0x9F}};
  if (lead >= 0xE1 && lead <= 0xEF) return {3, {0x80, 0xBF}};
  if (lead == 0xF0) return {4, {0x90, 0xBF}};
  if (lead >= 0xF1 && lead <= 0xF3) return {4, {0x80, 0xBF}};
  if (lead == 0xF4) return {4, {0x80, 0x8F}};
  return {0, {0, 0}};
}

bool in_range(uint8_t byte, ByteRange range) {
  return byte >= range.low && byte <= range.high;
}

}  // namespace

Utf8Sequence classify_utf8_sequence(std::string_view text) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  const LeadByteRule rule = lead_byte_rule(bytes[0]);
  if (rule.length == 0) return {Utf8Sequence::Kind::kInvalid, 1};
  for (size_t i = 1; i < rule.length; ++i) {
    if (i >= text.size()) return {Utf8Sequence::Kind::kIncomplete, i};
    const ByteRange allowed = i == 1 ? rule.second : ByteRange{0x80, 0xBF};
    if (!in_range(bytes[i], allowed)) return {Utf8Sequence::Kind::kInvalid, i};
  }
  return {Utf8Sequence::Kind::kValid, rule.length};
}

std::optional<size_t> first_invalid_utf8_offset(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const Utf8Sequence seq = classify_utf8_sequence(text.substr(pos));
    if (seq.kind != Utf8Sequence::Kind::kValid) return pos;
    pos += seq.length;
  }
  return std::nullopt;
}

size_t append_utf8_lossy(std::string_view bytes, std::string& out, bool hold_incomplete_tail) {
  size_t pos = 0;
  size_t clean_start = 0;  // start of the run of valid bytes not yet copied
  while (pos < bytes.size()) {
    if (static_cast<uint8_t>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const Utf8Sequence seq = classify_utf8_sequence(bytes.substr(pos));
    if (seq.kind == Utf8Sequence::Kind::kValid) {
      pos += seq.length;
      continue;
    }
    out.append(bytes.substr(clean_start, pos - clean_start));
    if (seq.kind == Utf8Sequence::Kind::kIncomplete && hold_incomplete_tail) return pos;
    out.append(kReplacementCharacter);
    pos += seq.length;
    clean_start = pos;
  }
  out.append(bytes.substr(clean_start));
  return bytes.size();
}

char32_t decode_code_point(std::string_view text, size_t length) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  static constexpr uint8_t kLeadMask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
  char32_t code = bytes[0] & kLeadMask[length];
  for (size_t i = 1; i < length; ++i)
    code = (code << 6) | (bytes[i] & 0x3F);
  return code;
}

void append_code_point(char32_t code_point, std::string& out) {
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

bool is_unicode_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool is_python_whitespace(char32_t c) {
  return is_unicode_white_space(c) || (c >= 0x1C && c <= 0x1F);
}

std::string_view python_strip(std::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    const Utf8Sequence seq = classify_utf8_sequence(text.substr(begin));
    if (seq.kind != Utf8Sequence::Kind::kValid) break;
    if (!is_python_whitespace(decode_code_point(text.substr(begin), seq.length))) break;
    begin += seq.length;
  }
  size_t end = text.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80)
      --start;
    const Utf8Sequence seq = classify_utf8_sequence(text.substr(start, end - start));
    if (seq.kind != Utf8Sequence::Kind::kValid || seq.length != end - start) break;
    if (!is_python_whitespace(decode_code_point(text.substr(start), seq.length))) break;
    end = start;
  }
  return text.substr(begin, end - begin);
}

}  // namespace llamaq
