// A canonical form of a Jinja chat template, used only to recognise which known template a
// checkpoint ships (llamaq renders the known formats natively and has no Jinja engine).
//
// Two templates with equal canonical forms render identically under transformers' Jinja
// settings (trim_blocks, lstrip_blocks, keep_trailing_newline=False): the canonical form
// applies exactly the whitespace Jinja itself removes (`-` modifiers, trim_blocks,
// lstrip_blocks, line-ending normalisation, comments), compares string literals by value
// (so '\n' written as an escape and as a real newline are equal), and ignores insignificant
// whitespace inside tags. It never equates templates that differ in output text, so
// recognition by comparison is safe; re-indented or re-escaped copies of a known template are
// still recognised.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace llamaq {

// nullopt when the text uses constructs this canonicaliser does not model ({% raw %},
// unterminated tags or strings, \N{...} escapes); such a template is then simply not recognised.
std::optional<std::string> canonical_jinja_template(std::string_view template_text);

}  // namespace llamaq
