// JSON field access with file-and-path error messages (see json_fields.h).
#include "tokenizer/json_fields.h"

#include "core/error.h"

namespace llamaq {

Json parse_json_document(std::string_view text, std::string_view source) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    fail("{}: invalid JSON: {}", source, e.what());
  }
}

void JsonFields::fail_at(std::string_view path, std::string_view problem) const {
  fail("{}: field '{}' {}", source_, path, problem);
}

std::string JsonFields::join(std::string_view parent, std::string_view key) {
  std::string path(parent);
  if (!path.empty()) path += '.';
  path += key;
  return path;
}

const Json& JsonFields::required(const Json& object, std::string_view parent,
                                 std::string_view key) const {
  expect_object(object, parent);
  const auto it = object.find(key);
  if (it == object.end()) fail("{}: missing field '{}'", source_, join(parent, key));
  return *it;
}

const Json* JsonFields::optional(const Json& object, std::string_view key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

void JsonFields::expect_object(const Json& value, std::string_view path) const {
  if (!value.is_object()) fail_at(path.empty() ? "(document)" : path, "must be a JSON object");
}

void JsonFields::expect_array(const Json& value, std::string_view path) const {
  if (!value.is_array()) fail_at(path, "must be a JSON array");
}

const std::string& JsonFields::string_value(const Json& value, std::string_view path) const {
  if (!value.is_string()) fail_at(path, "must be a string");
  return value.get_ref<const std::string&>();
}

bool JsonFields::bool_value(const Json& value, std::string_view path) const {
  if (!value.is_boolean()) fail_at(path, "must be true or false");
  return value.get<bool>();
}

int64_t JsonFields::integer_value(const Json& value, std::string_view path) const {
  if (value.is_number_unsigned()) {
    const uint64_t number = value.get<uint64_t>();
    if (number > uint64_t(INT64_MAX)) fail_at(path, "is too large");
    return int64_t(number);
  }
  if (!value.is_number_integer()) fail_at(path, "must be an integer");
  return value.get<int64_t>();
}

bool JsonFields::optional_bool(const Json& object, std::string_view parent, std::string_view key,
                               bool fallback) const {
  const Json* value = optional(object, key);
  return value ? bool_value(*value, join(parent, key)) : fallback;
}

std::string JsonFields::optional_string(const Json& object, std::string_view parent,
                                        std::string_view key) const {
  const Json* value = optional(object, key);
  return value ? string_value(*value, join(parent, key)) : std::string();
}

}  // namespace llamaq
