// Canonical form of Jinja templates (see jinja_canonical.h). The whitespace rules follow Jinja's
// lexer (jinja2/lexer.py) with trim_blocks=True, lstrip_blocks=True,
// keep_trailing_newline=False, the environment transformers renders chat templates with.
#include "tokenizer/jinja_canonical.h"

#include <cstdint>
#include <vector>

#include "tokenizer/utf8_text.h"

namespace llamaq {
namespace {

struct Piece {
  enum class Kind { kData, kVariable, kBlock, kComment };
  Kind kind = Kind::kData;
  std::string text;  // data, or the tag's inner text without delimiters and modifiers
  char open_modifier = 0;
  char close_modifier = 0;
  bool is_block_like() const { return kind == Kind::kBlock || kind == Kind::kComment; }
};

// Jinja joins the lines split at \r\n, \r and \n with \n and drops one trailing newline.
std::string normalize_newlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// End of the tag body that starts at `pos`: the offset of the closing delimiter, skipping string
// literals and bracketed sub-expressions. npos when unterminated.
size_t find_tag_end(std::string_view source, size_t pos, std::string_view close) {
  int depth = 0;
  while (pos < source.size()) {
    const char c = source[pos];
    if (c == '\'' || c == '"') {
      for (++pos; pos < source.size() && source[pos] != c; ++pos) {
        if (source[pos] == '\\') ++pos;
      }
      if (pos >= source.size()) return std::string_view::npos;
    } else if (c == '(' || c == '[' || c == '{') {
      ++depth;
    } else if (depth > 0 && (c == ')' || c == ']' || c == '}')) {
      --depth;
    } else if (depth == 0 && source.substr(pos, close.size()) == close) {
      return pos;
    }
    ++pos;
  }
  return std::string_view::npos;
}

bool lex_tag(std::string_view source, size_t& pos, Piece& tag) {
  const char opener = source[pos + 1];
  tag.kind = opener == '{'   ? Piece::Kind::kVariable
             : opener == '%' ? Piece::Kind::kBlock
                             : Piece::Kind::kComment;
  const std::string_view close = opener == '{' ? "}}" : opener == '%' ? "%}" : "#}";
  pos += 2;
  if (pos < source.size() && (source[pos] == '-' || source[pos] == '+'))
    tag.open_modifier = source[pos++];
  const size_t end = tag.kind == Piece::Kind::kComment ? source.find(close, pos)
                                                       : find_tag_end(source, pos, close);
  if (end == std::string_view::npos) return false;
  size_t inner_end = end;
  if (inner_end > pos && (source[inner_end - 1] == '-' || source[inner_end - 1] == '+')) {
    tag.close_modifier = source[--inner_end];
  }
  tag.text = std::string(source.substr(pos, inner_end - pos));
  pos = end + close.size();
  return true;
}

// Offset of the next "{{", "{%" or "{#" at or after pos, or source.size().
size_t find_tag_start(std::string_view source, size_t pos) {
  for (; (pos = source.find('{', pos)) != std::string_view::npos; ++pos) {
    if (pos + 1 < source.size() &&
        std::string_view("{%#").find(source[pos + 1]) != std::string_view::npos) {
      return pos;
    }
  }
  return source.size();
}

std::optional<std::vector<Piece>> lex(std::string_view source) {
  std::vector<Piece> pieces;
  size_t pos = 0;
  while (pos < source.size()) {
    const size_t tag_start = find_tag_start(source, pos);
    if (tag_start > pos) {
      pieces.push_back({Piece::Kind::kData, std::string(source.substr(pos, tag_start - pos))});
    }
    if (tag_start == source.size()) break;
    pos = tag_start;
    Piece tag;
    if (!lex_tag(source, pos, tag)) return std::nullopt;
    pieces.push_back(std::move(tag));
  }
  return pieces;
}

// Length in bytes of the whitespace (Python str.isspace) prefix / suffix of text.
size_t leading_space(std::string_view text) {
  const std::string_view core = python_strip(text);
  return core.empty() ? text.size() : size_t(core.data() - text.data());
}
size_t trailing_space(std::string_view text) {
  const std::string_view core = python_strip(text);
  if (core.empty()) return text.size();
  return size_t(text.data() + text.size() - (core.data() + core.size()));
}

void apply_whitespace_control(std::vector<Piece>& pieces) {
  for (size_t i = 0; i < pieces.size(); ++i) {
    Piece& data = pieces[i];
    if (data.kind != Piece::Kind::kData) continue;
    const Piece* previous = i > 0 ? &pieces[i - 1] : nullptr;
    const Piece* next = i + 1 < pieces.size() ? &pieces[i + 1] : nullptr;
    bool line_starting = previous == nullptr;
    if (previous && previous->close_modifier == '-') {
      const size_t strip = leading_space(data.text);
      line_starting = strip > 0 && data.text[strip - 1] == '\n';
      data.text.erase(0, strip);
    } else if (previous && previous->is_block_like() && previous->close_modifier != '+' &&
               !data.text.empty() && data.text[0] == '\n') {
      data.text.erase(0, 1);  // trim_blocks
      line_starting = true;
    }
    if (next && next->open_modifier == '-') {
      data.text.erase(data.text.size() - trailing_space(data.text));
    } else if (next && next->is_block_like() && next->open_modifier != '+') {  // lstrip_blocks
      const size_t line_start = data.text.rfind('\n') + 1;                     // npos + 1 == 0
      const std::string_view last_line = std::string_view(data.text).substr(line_start);
      if ((line_start > 0 || line_starting) && !last_line.empty() &&
          python_strip(last_line).empty()) {
        data.text.erase(line_start);
      }
    }
  }
}

bool is_word_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

bool is_operator_char(char c) {
  return std::string_view("*/=!<>-+~%|.").find(c) != std::string_view::npos;
}

bool read_hex(std::string_view body, size_t& i, size_t digits, char32_t& value) {
  value = 0;
  for (size_t k = 0; k < digits; ++k) {
    if (++i >= body.size()) return false;
    const char h = body[i];
    const int digit = (h >= '0' && h <= '9')   ? h - '0'
                      : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                      : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                               : -1;
    if (digit < 0) return false;
    value = value * 16 + char32_t(digit);
  }
  return true;
}

// Value of a Jinja string literal body (Python "unicode-escape" rules).
std::optional<std::string> decode_string_literal(std::string_view body) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      out.push_back(body[i]);
      continue;
    }
    const char e = body[++i];
    static constexpr std::string_view kSimple = "\\'\"abfnrtv";
    static constexpr std::string_view kSimpleValue = "\\'\"\a\b\f\n\r\t\v";
    char32_t code = 0;
    if (e == '\n') continue;  // line continuation
    if (const size_t k = kSimple.find(e); k != std::string_view::npos) {
      out.push_back(kSimpleValue[k]);
      continue;
    }
    if (e >= '0' && e <= '7') {
      code = char32_t(e - '0');
      for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7';
           ++k) {
        code = code * 8 + char32_t(body[++i] - '0');
      }
    } else if (e == 'x' || e == 'u' || e == 'U') {
      if (!read_hex(body, i, e == 'x' ? 2 : e == 'u' ? 4 : 8, code)) return std::nullopt;
    } else if (e == 'N' || static_cast<unsigned char>(e) >= 0x80) {
      return std::nullopt;  // named escapes and escaped non-ASCII are not modelled
    } else {
      out.push_back('\\');  // unknown escapes stay as written
      out.push_back(e);
      continue;
    }
    if (code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return std::nullopt;
    append_code_point(code, out);
  }
  return out;
}

std::optional<std::string> canonical_expression(std::string_view inner) {
  std::string out;
  bool pending_space = false;
  for (size_t i = 0; i < inner.size(); ++i) {
    const char c = inner[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space && ((is_word_char(out.back()) && is_word_char(c)) ||
                          (is_operator_char(out.back()) && is_operator_char(c)))) {
      out.push_back(' ');
    }
    pending_space = false;
    if (c != '\'' && c != '"') {
      out.push_back(c);
      continue;
    }
    size_t end = i + 1;
    while (end < inner.size() && inner[end] != c)
      end += inner[end] == '\\' ? 2 : 1;
    if (end >= inner.size()) return std::nullopt;
    const std::optional<std::string> value =
        decode_string_literal(inner.substr(i + 1, end - i - 1));
    if (!value) return std::nullopt;
    out.push_back('"');
    for (const char v : *value) {
      if (v == '"' || v == '\\') out.push_back('\\');
      out.push_back(v);
    }
    out.push_back('"');
    i = end;
  }
  return out;
}

void append_entry(std::string& canonical, char kind, std::string_view text) {
  canonical.push_back(kind);
  canonical += std::to_string(text.size());
  canonical.push_back(':');
  canonical.append(text);
}

}  // namespace

std::optional<std::string> canonical_jinja_template(std::string_view template_text) {
  std::optional<std::vector<Piece>> pieces = lex(normalize_newlines(template_text));
  if (!pieces) return std::nullopt;
  apply_whitespace_control(*pieces);
  std::string canonical;
  std::string pending_data;  // data pieces separated only by comments print as one
  for (const Piece& piece : *pieces) {
    if (piece.kind == Piece::Kind::kComment) continue;
    if (piece.kind == Piece::Kind::kData) {
      pending_data += piece.text;
      continue;
    }
    if (!pending_data.empty()) append_entry(canonical, 'D', pending_data);
    pending_data.clear();
    const std::optional<std::string> expression = canonical_expression(piece.text);
    if (!expression) return std::nullopt;
    if (piece.kind == Piece::Kind::kBlock && *expression == "raw") return std::nullopt;
    append_entry(canonical, piece.kind == Piece::Kind::kBlock ? 'B' : 'V', *expression);
  }
  if (!pending_data.empty()) append_entry(canonical, 'D', pending_data);
  return canonical;
}

}  // namespace llamaq
