// Training examples from JSON Lines: record shapes, label masking and file loading (dataset.h).
#include "train/dataset.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "core/error.h"
#include "core/progress.h"
#include "tokenizer/utf8_text.h"

namespace llamaq {
namespace {

using nlohmann::json;

constexpr std::string_view kEndOfTurn = "<|eot_id|>";
constexpr std::string_view kFinetunePad = "<|finetune_right_pad_id|>";
constexpr std::string_view kUtf8ByteOrderMark = "\xEF\xBB\xBF";

// Stanford Alpaca's PROMPT_DICT (tatsu-lab/stanford_alpaca train.py), verbatim.
constexpr std::string_view kAlpacaPreambleWithInput =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n";
constexpr std::string_view kAlpacaPreambleNoInput =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n";

// ---- Masking helpers ------------------------------------------------------------------------

Example masked_example(std::vector<int32_t> ids) {
  Example example;
  example.labels.assign(ids.size(), kIgnoreIndex);
  example.input_ids = std::move(ids);
  return example;
}

// Appends ids to the example with loss on them (trainable) or without.
void append_ids(Example& example, std::span<const int32_t> ids, bool trainable) {
  example.input_ids.insert(example.input_ids.end(), ids.begin(), ids.end());
  if (trainable) {
    example.labels.insert(example.labels.end(), ids.begin(), ids.end());
  } else {
    example.labels.insert(example.labels.end(), ids.size(), kIgnoreIndex);
  }
}

bool is_prefix(std::span<const int32_t> prefix, std::span<const int32_t> ids) {
  return prefix.size() <= ids.size() && std::equal(prefix.begin(), prefix.end(), ids.begin());
}

// ---- Reporting user data in messages --------------------------------------------------------

// A short printable excerpt of user text (valid UTF-8, control characters shown as '?').
std::string excerpt(std::string_view text) {
  constexpr size_t kMaxBytes = 40;
  std::string shown = utf8_lossy(text.substr(0, kMaxBytes));
  for (char& c : shown) {
    if (static_cast<unsigned char>(c) < 0x20) c = '?';
  }
  return text.size() > kMaxBytes ? shown + "..." : shown;
}

std::string describe_keys(const json& object) {
  if (object.empty()) return "none";
  std::string keys;
  size_t shown = 0;
  for (const auto& item : object.items()) {
    if (shown == 5) return keys + ", ...";
    keys += (shown++ ? ", \"" : "\"") + excerpt(item.key()) + "\"";
  }
  return keys;
}

// ---- Typed access to a parsed line ----------------------------------------------------------

const json* find_field(const json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

const std::string& as_string(const json& value, std::string_view what) {
  if (!value.is_string()) fail("{} must be a string, not {}", what, value.type_name());
  return value.get_ref<const std::string&>();
}

const std::string& required_string(const json& object, const char* key, std::string_view what) {
  const json* value = find_field(object, key);
  if (!value) fail("{} has no \"{}\"", what, key);
  return as_string(*value, fmt::format("{} \"{}\"", what, key));
}

ChatMessage parse_message(const json& message, size_t index) {
  const std::string what = fmt::format("messages[{}]", index);
  if (!message.is_object()) fail("{} must be an object, not {}", what, message.type_name());
  ChatMessage parsed{required_string(message, "role", what),
                     required_string(message, "content", what)};
  if (parsed.role != "system" && parsed.role != "user" && parsed.role != "assistant") {
    fail("{}: role \"{}\" is not supported (use system, user or assistant)", what,
         excerpt(parsed.role));
  }
  return parsed;
}

std::vector<ChatMessage> parse_messages(const json& messages) {
  if (!messages.is_array()) fail("\"messages\" must be an array, not {}", messages.type_name());
  if (messages.empty()) fail("\"messages\" is empty");
  std::vector<ChatMessage> parsed;
  parsed.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i)
    parsed.push_back(parse_message(messages[i], i));
  return parsed;
}

Example parse_alpaca(const json& record, const ExampleEncoder& encoder) {
  const std::string& instruction = required_string(record, "instruction", "the Alpaca record");
  const std::string& output = required_string(record, "output", "the Alpaca record");
  const json* input = find_field(record, "input");
  if (!input || input->is_null()) return encoder.encode_alpaca(instruction, "", output);
  return encoder.encode_alpaca(instruction, as_string(*input, "\"input\""), output);
}

Example parse_record(const json& record, const ExampleEncoder& encoder) {
  if (!record.is_object()) fail("expected a JSON object, not {}", record.type_name());
  if (const json* messages = find_field(record, "messages")) {
    return encoder.encode_chat(parse_messages(*messages));
  }
  if (find_field(record, "instruction") || find_field(record, "output")) {
    return parse_alpaca(record, encoder);
  }
  if (const json* text = find_field(record, "text")) {
    return encoder.encode_text(as_string(*text, "\"text\""));
  }
  fail(
      "unknown record shape: expected \"messages\" (chat), \"instruction\" and \"output\" "
      "(Alpaca) or \"text\"; the keys are {}",
      describe_keys(record));
}

// "[json.exception.parse_error.101] parse error at line 1, column 5: ..." -> "column 5: ...".
std::string json_error_detail(const json::exception& error) {
  const std::string_view message = error.what();
  const size_t column = message.find("column ");
  const std::string_view detail =
      column == std::string_view::npos ? message : message.substr(column);
  return utf8_lossy(detail);
}

json parse_json_line(std::string_view line) {
  if (const std::optional<size_t> bad = first_invalid_utf8_offset(line)) {
    fail("not valid UTF-8 (ill-formed byte sequence at column {})", *bad + 1);
  }
  try {
    return json::parse(line);
  } catch (const json::exception& error) {
    fail("invalid JSON ({})", json_error_detail(error));
  }
}

// ---- Files ----------------------------------------------------------------------------------

struct JsonlLine {
  std::string_view text;
  int64_t number;  // 1-based
};

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open training data {}: {}", path.string(), std::strerror(errno));
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) fail("cannot read training data {}", path.string());
  return std::move(content).str();
}

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

std::vector<JsonlLine> split_jsonl_lines(std::string_view content) {
  if (content.starts_with(kUtf8ByteOrderMark)) content.remove_prefix(kUtf8ByteOrderMark.size());
  std::vector<JsonlLine> lines;
  int64_t number = 0;
  while (!content.empty()) {
    const size_t end = std::min(content.find('\n'), content.size());
    std::string_view line = content.substr(0, end);
    content.remove_prefix(std::min(end + 1, content.size()));
    ++number;
    if (line.ends_with('\r')) line.remove_suffix(1);
    if (!is_blank(line)) lines.push_back({line, number});
  }
  return lines;
}

// The first failure of a parallel pass over lines: the one with the lowest index wins.
class FirstLineError {
 public:
  void record(size_t index, std::string message) {
    const std::lock_guard lock(mutex_);
    if (index < index_) {
      index_ = index;
      message_ = std::move(message);
    }
  }
  void throw_if_any() const {
    if (index_ != kNone) throw Error(message_);
  }

 private:
  static constexpr size_t kNone = static_cast<size_t>(-1);
  std::mutex mutex_;
  size_t index_ = kNone;
  std::string message_;
};

void encode_lines(std::span<const JsonlLine> lines, const ExampleEncoder& encoder,
                  const std::string& source, ThreadPool* pool, std::span<Example> out) {
  FirstLineError first_error;
  const auto encode_range = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      try {
        out[size_t(i)] =
            parse_example_line(lines[size_t(i)].text, encoder, source, lines[size_t(i)].number);
      } catch (const Error& error) {
        first_error.record(size_t(i), error.what());
        return;  // later lines of this chunk cannot be the first error
      }
    }
  };
  if (pool) {
    pool->parallel_for(int64_t(lines.size()), encode_range, /*min_chunk=*/8);
  } else {
    encode_range(0, int64_t(lines.size()));
  }
  first_error.throw_if_any();
}

}  // namespace

// ---- Public API -----------------------------------------------------------------------------

int64_t count_loss_tokens(std::span<const int32_t> labels) {
  if (labels.empty()) return 0;
  return std::count_if(labels.begin() + 1, labels.end(),
                       [](int32_t label) { return label != kIgnoreIndex; });
}

ExampleEncoder::ExampleEncoder(Tokenizer tokenizer, ExampleEncoderOptions options)
    : tokenizer_(std::move(tokenizer)), options_(std::move(options)) {
  if (options_.eos_id) {
    static_cast<void>(tokenizer_.token_bytes(*options_.eos_id));  // throws for a non-token
    eos_id_ = options_.eos_id;
  } else if (const std::vector<int32_t> stops = tokenizer_.stop_ids({}); !stops.empty()) {
    eos_id_ = stops.front();
  }
}

int32_t ExampleEncoder::eos_id() const {
  if (!eos_id_) fail("the tokenizer has no end-of-text token (eos_token, <|end_of_text|>)");
  return *eos_id_;
}

int32_t ExampleEncoder::pad_id() const {
  if (const std::optional<int32_t> pad = tokenizer_.find_token(kFinetunePad)) return *pad;
  return eos_id();
}

const ChatFormat& ExampleEncoder::require_chat_format() const {
  const ChatFormat* format = tokenizer_.chat_format();
  if (!format) {
    fail(
        "chat records need a chat template, and this tokenizer has none "
        "(tokenizer_config.json chat_template)");
  }
  return *format;
}

int32_t ExampleEncoder::require_end_of_turn_id() const {
  const std::optional<int32_t> id = tokenizer_.find_token(kEndOfTurn);
  if (!id || !tokenizer_.is_special(*id)) {
    fail("the tokenizer has no special {} token to end chat turns", kEndOfTurn);
  }
  return *id;
}

Example ExampleEncoder::encode_chat(std::span<const ChatMessage> messages) const {
  if (messages.empty()) fail("the conversation has no messages");
  const auto is_assistant = [](const ChatMessage& m) { return m.role == "assistant"; };
  if (std::none_of(messages.begin(), messages.end(), is_assistant)) {
    fail("the conversation has no assistant message, so nothing to train on");
  }
  if (is_assistant(messages.front())) {
    fail(
        "the conversation starts with an assistant message; it needs a system or user message "
        "before it");
  }
  const ChatFormat& format = require_chat_format();
  const int32_t end_of_turn = require_end_of_turn_id();
  Example example = masked_example(format.encode(tokenizer_, messages, false, options_.chat));
  size_t used_end = 0;
  for (size_t k = 1; k < messages.size(); ++k) {
    if (!is_assistant(messages[k])) continue;
    const std::vector<int32_t> prompt =
        format.encode(tokenizer_, messages.first(k), /*add_generation_prompt=*/true, options_.chat);
    if (!is_prefix(prompt, example.input_ids)) {
      fail("messages[{}]: the chat format's prompt is not a prefix of the conversation's ids", k);
    }
    const auto turn_end = std::find(example.input_ids.begin() + ptrdiff_t(prompt.size()),
                                    example.input_ids.end(), end_of_turn);
    if (turn_end == example.input_ids.end())
      fail("messages[{}]: no {} ends the turn", k, kEndOfTurn);
    used_end = size_t(turn_end - example.input_ids.begin()) + 1;
    std::copy(example.input_ids.begin() + ptrdiff_t(prompt.size()),
              example.input_ids.begin() + ptrdiff_t(used_end),
              example.labels.begin() + ptrdiff_t(prompt.size()));
  }
  example.input_ids.resize(used_end);
  example.labels.resize(used_end);
  return example;
}

Example ExampleEncoder::encode_alpaca(std::string_view instruction, std::string_view input,
                                      std::string_view output) const {
  const bool use_chat =
      options_.alpaca_template == AlpacaTemplate::kChat ||
      (options_.alpaca_template == AlpacaTemplate::kAuto && tokenizer_.chat_format() != nullptr);
  if (!use_chat) return encode_alpaca_prompt(instruction, input, output);
  std::string user(instruction);
  if (!input.empty()) user += "\n\n" + std::string(input);
  const std::vector<ChatMessage> messages = {{"user", std::move(user)},
                                             {"assistant", std::string(output)}};
  return encode_chat(messages);
}

Example ExampleEncoder::encode_alpaca_prompt(std::string_view instruction, std::string_view input,
                                             std::string_view output) const {
  std::string prompt(input.empty() ? kAlpacaPreambleNoInput : kAlpacaPreambleWithInput);
  prompt += "### Instruction:\n" + std::string(instruction) + "\n\n";
  if (!input.empty()) prompt += "### Input:\n" + std::string(input) + "\n\n";
  prompt += "### Response:\n";
  Example example = masked_example(tokenizer_.encode_with_bos(prompt, /*parse_special=*/false));
  append_ids(example, tokenizer_.encode(output, /*parse_special=*/false), true);
  const int32_t eos = eos_id();
  append_ids(example, std::span(&eos, 1), true);
  return example;
}

Example ExampleEncoder::encode_text(std::string_view text) const {
  if (text.empty()) fail("\"text\" is empty");
  Example example;
  append_ids(example, tokenizer_.encode_with_bos(text, /*parse_special=*/false), true);
  const int32_t eos = eos_id();
  append_ids(example, std::span(&eos, 1), true);
  return example;
}

Example parse_example_line(std::string_view line, const ExampleEncoder& encoder,
                           std::string_view source, int64_t line_number) {
  try {
    Example example = parse_record(parse_json_line(line), encoder);
    example.line = line_number;
    return example;
  } catch (const Error& error) {
    throw Error(fmt::format("{}:{}: {}", source, line_number, error.what()));
  } catch (const json::exception& error) {
    throw Error(fmt::format("{}:{}: {}", source, line_number, json_error_detail(error)));
  }
}

std::vector<Example> load_jsonl_examples(const std::filesystem::path& path,
                                         const ExampleEncoder& encoder,
                                         const DatasetLoadOptions& options) {
  const std::string content = read_text_file(path);
  const std::vector<JsonlLine> lines = split_jsonl_lines(content);
  if (lines.empty()) fail("training data {} has no examples", path.string());
  std::vector<Example> examples(lines.size());
  constexpr size_t kBlockLines = 1024;  // progress granularity
  std::optional<ProgressBar> progress;
  if (options.show_progress) progress.emplace("tokenizing", int64_t(lines.size()), "lines");
  for (size_t begin = 0; begin < lines.size(); begin += kBlockLines) {
    const size_t count = std::min(kBlockLines, lines.size() - begin);
    encode_lines(std::span(lines).subspan(begin, count), encoder, path.string(), options.pool,
                 std::span(examples).subspan(begin, count));
    if (progress) progress->advance(int64_t(count));
  }
  if (progress) progress->finish();
  return examples;
}

}  // namespace llamaq
