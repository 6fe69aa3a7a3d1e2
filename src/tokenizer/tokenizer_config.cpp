// tokenizer_config.json reader (see tokenizer_config.h).
#include "tokenizer/tokenizer_config.h"

#include "core/error.h"
#include "tokenizer/json_fields.h"

namespace llamaq {
namespace {

std::optional<std::string> token_field(const JsonFields& fields, const Json& config,
                                       std::string_view key) {
  const Json* value = JsonFields::optional(config, key);
  if (!value) return std::nullopt;
  if (value->is_object()) {
    const std::string path = JsonFields::join(key, "content");
    return fields.string_value(fields.required(*value, key, "content"), path);
  }
  return fields.string_value(*value, key);
}

std::optional<std::string> chat_template_field(const JsonFields& fields, const Json& config) {
  const Json* value = JsonFields::optional(config, "chat_template");
  if (!value) return std::nullopt;
  if (!value->is_array()) return fields.string_value(*value, "chat_template");
  for (size_t i = 0; i < value->size(); ++i) {
    const std::string path = fmt::format("chat_template[{}]", i);
    const Json& entry = (*value)[i];
    if (fields.string_value(fields.required(entry, path, "name"), path + ".name") == "default") {
      return fields.string_value(fields.required(entry, path, "template"), path + ".template");
    }
  }
  fields.fail_at("chat_template", "is a list of templates without one named \"default\"");
}

}  // namespace

TokenizerConfig parse_tokenizer_config(std::string_view json_text, std::string_view source) {
  const JsonFields fields{std::string(source)};
  try {
    const Json config = parse_json_document(json_text, source);
    fields.expect_object(config, "");
    TokenizerConfig result;
    result.bos_token = token_field(fields, config, "bos_token");
    result.eos_token = token_field(fields, config, "eos_token");
    result.chat_template = chat_template_field(fields, config);
    return result;
  } catch (const Json::exception& e) {
    fail("{}: unexpected structure: {}", source, e.what());
  }
}

}  // namespace llamaq
