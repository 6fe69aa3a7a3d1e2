// GPT-2 bytes_to_unicode table and its inverse.
#include "tokenizer/byte_level.h"

#include <array>
#include <cstdint>

#include "tokenizer/utf8_text.h"

namespace llamaq {
namespace {

bool maps_to_itself(unsigned b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct ByteLevelTables {
  std::array<char32_t, 256> code_point_of_byte{};
  std::array<int16_t, 0x144> byte_of_code_point{};  // -1: not in the alphabet

  ByteLevelTables() {
    byte_of_code_point.fill(-1);
    char32_t next_extra = 0x100;
    for (unsigned b = 0; b < 256; ++b) {
      code_point_of_byte[b] = maps_to_itself(b) ? char32_t(b) : next_extra++;
      byte_of_code_point[code_point_of_byte[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& tables() {
  static const ByteLevelTables instance;
  return instance;
}

}  // namespace

char32_t byte_level_code_point(unsigned char b) {
  return tables().code_point_of_byte[b];
}

std::optional<std::string> byte_level_to_bytes(std::string_view text) {
  const ByteLevelTables& t = tables();
  std::string bytes;
  bytes.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const Utf8Sequence seq = classify_utf8_sequence(text.substr(pos));
    if (seq.kind != Utf8Sequence::Kind::kValid) return std::nullopt;
    const char32_t code_point = decode_code_point(text.substr(pos), seq.length);
    if (code_point >= t.byte_of_code_point.size() || t.byte_of_code_point[code_point] < 0) {
      return std::nullopt;
    }
    bytes.push_back(static_cast<char>(t.byte_of_code_point[code_point]));
    pos += seq.length;
  }
  return bytes;
}

std::string bytes_to_byte_level(std::string_view bytes) {
  std::string text;
  text.reserve(bytes.size() * 2);
  for (const char c : bytes)
    append_code_point(byte_level_code_point(static_cast<unsigned char>(c)), text);
  return text;
}

}  // namespace llamaq
