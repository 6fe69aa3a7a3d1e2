// Typed access to fields of a parsed JSON document with llamaq::Error messages that name the
// file and the field path ("tokenizer.json: field 'model.vocab' must be an object"), so a
// malformed or unsupported tokenizer file never surfaces as a bare nlohmann exception.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace llamaq {

using Json = nlohmann::json;

// Parses text; invalid JSON becomes llamaq::Error naming source.
Json parse_json_document(std::string_view text, std::string_view source);

class JsonFields {
 public:
  explicit JsonFields(std::string source) : source_(std::move(source)) {}
  const std::string& source() const { return source_; }

  // "parent.key" (or "key" at the top level): the path used in messages.
  static std::string join(std::string_view parent, std::string_view key);

  // Required member of the object at path `parent`.
  const Json& required(const Json& object, std::string_view parent, std::string_view key) const;
  // Member or nullptr when it is absent or JSON null.
  static const Json* optional(const Json& object, std::string_view key);

  void expect_object(const Json& value, std::string_view path) const;
  void expect_array(const Json& value, std::string_view path) const;
  const std::string& string_value(const Json& value, std::string_view path) const;
  bool bool_value(const Json& value, std::string_view path) const;
  int64_t integer_value(const Json& value, std::string_view path) const;

  // Optional bool member with a default.
  bool optional_bool(const Json& object, std::string_view parent, std::string_view key,
                     bool fallback) const;
  // Optional string member; empty when absent or null.
  std::string optional_string(const Json& object, std::string_view parent,
                              std::string_view key) const;

  [[noreturn]] void fail_at(std::string_view path, std::string_view problem) const;

 private:
  std::string source_;
};

}  // namespace llamaq
