// The GPT-2 "byte-level" alphabet used by Hugging Face ByteLevel pre-tokenizers and decoders:
// every byte value is written as one printable code point (0x21..0x7E, 0xA1..0xAC, 0xAE..0xFF map
// to themselves; the other 68 bytes, in increasing order, to U+0100..U+0143). tokenizer.json
// stores vocab and merges in this alphabet; the engine works on raw bytes, so the alphabet is
// needed only to read the file and to decode tokens the way Hugging Face's ByteLevel decoder does.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace llamaq {

// Code point that represents byte b in the byte-level alphabet.
char32_t byte_level_code_point(unsigned char b);

// Maps a byte-level string back to raw bytes. Returns nullopt when the text is not valid UTF-8
// or contains a code point outside the alphabet (Hugging Face's ByteLevel decoder then keeps the
// token's own UTF-8 bytes instead).
std::optional<std::string> byte_level_to_bytes(std::string_view text);

// Raw bytes to their byte-level spelling (as tokenizer.json writes them).
std::string bytes_to_byte_level(std::string_view bytes);

}  // namespace llamaq
