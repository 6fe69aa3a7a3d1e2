// Supervised fine-tuning data: JSON Lines files whose lines are chat, Alpaca or plain-text
// records, turned into token ids and loss labels with transformers' conventions (labels have the
// length of input_ids, are NOT shifted — the model shifts — and are -100 where no loss is taken).
//
// Line shapes (other keys on a line are ignored; the first matching shape wins, in this order):
//   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
//       Rendered with the model's chat format (tokenizer/chat_format.h). Loss on every assistant
//       turn's content tokens and its closing <|eot_id|>; BOS, headers (including the
//       "assistant<|end_header_id|>\n\n" the prompt ends with), system and user turns are masked.
//       Content is tokenized without special-token parsing, so data cannot forge turns.
//   {"instruction": "...", "input": "..." (optional, may be null), "output": "..."}
//       Alpaca. By default (AlpacaTemplate::kAuto) the chat format when the tokenizer has a chat
//       template (an unsupported template is an error, never a guess): the instruction (plus "\n\n"
//       + input when there is one) is the user turn and the output the assistant turn, so the tuned
//       model answers the same way in `llamaq chat` as it was trained, and the loss is on the
//       output + <|eot_id|>. Without a chat template, the standard Stanford Alpaca prompt text (as
//       artidoro/qlora's collator builds it): BOS + prompt (masked) + output + EOS (loss on output
//       and EOS).
//   {"text": "..."}
//       Plain text: BOS + text + EOS, loss on every token.
//
// Chat spans are computed from the chat format itself: for each assistant message k the
// generation prompt of messages[0..k) (the conversation so far plus the assistant header) is
// encoded and must be a prefix of the whole conversation's ids; the assistant span runs from
// there through the next <|eot_id|>. Tokens after the last assistant turn are dropped: they carry
// no loss and, under causal attention, cannot change the loss of earlier tokens (this also drops
// the assistant header the early Llama 3 template appends to every conversation). The cost is
// one extra encoding of the conversation so far per assistant turn: quadratic in the number of
// turns, which is negligible for SFT conversations (a handful of turns).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "core/thread_pool.h"
#include "tokenizer/tokenizer.h"

namespace llamaq {

// The label of a position that takes no loss (PyTorch's CrossEntropyLoss ignore_index).
inline constexpr int32_t kIgnoreIndex = -100;

struct Example {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;  // same length as input_ids; kIgnoreIndex where masked
  int64_t line = 0;             // 1-based line in the source file (0 when not from a file)
};

// Cross-entropy terms a row of labels contributes: positions t >= 1 with labels[t] !=
// kIgnoreIndex. Position 0 is never a target because the model predicts labels[t] from the
// logits at t - 1 (transformers counts the same way since huggingface/transformers#46204).
int64_t count_loss_tokens(std::span<const int32_t> labels);

enum class AlpacaTemplate {
  kAuto,          // kChat when the tokenizer has a chat template, else kAlpacaPrompt
  kChat,          // instruction (+ input) as the user turn, output as the assistant turn
  kAlpacaPrompt,  // the Stanford Alpaca prompt text, BOS + prompt + output + EOS
};

struct ExampleEncoderOptions {
  AlpacaTemplate alpaca_template = AlpacaTemplate::kAuto;
  ChatRenderOptions chat;  // Llama 3.1's "Today Date" line
  // The end token of text and Alpaca-prompt examples. Default: the first of the tokenizer's
  // stop_ids(), i.e. tokenizer_config.json's eos_token when it has one (what TRL appends:
  // <|end_of_text|> for base Llama 3, <|eot_id|> for 3.1 Instruct), else <|eot_id|>.
  std::optional<int32_t> eos_id;
};

// Turns records into examples with one tokenizer; immutable, safe to use from several threads.
// Every error is a llamaq::Error without a location (parse_example_line adds it).
class ExampleEncoder {
 public:
  explicit ExampleEncoder(Tokenizer tokenizer, ExampleEncoderOptions options = {});

  // Throws for an empty conversation, unsupported roles, no assistant message, an assistant
  // message first, invalid UTF-8 or a tokenizer without a chat template.
  Example encode_chat(std::span<const ChatMessage> messages) const;
  // `input` may be empty (no input).
  Example encode_alpaca(std::string_view instruction, std::string_view input,
                        std::string_view output) const;
  // Throws for empty text.
  Example encode_text(std::string_view text) const;

  const Tokenizer& tokenizer() const { return tokenizer_; }
  const ExampleEncoderOptions& options() const { return options_; }
  // The end token of text/Alpaca-prompt examples (see ExampleEncoderOptions::eos_id).
  int32_t eos_id() const;
  // The id padding positions get: <|finetune_right_pad_id|> when the vocabulary has it (Llama
  // 3.1+), else eos_id(). Padding always has label kIgnoreIndex, so the choice never matters
  // for the loss.
  int32_t pad_id() const;

 private:
  Example encode_alpaca_prompt(std::string_view instruction, std::string_view input,
                               std::string_view output) const;
  const ChatFormat& require_chat_format() const;
  int32_t require_end_of_turn_id() const;

  Tokenizer tokenizer_;
  ExampleEncoderOptions options_;
  std::optional<int32_t> eos_id_;
};

// One JSONL line (not blank) to an example. Throws llamaq::Error "SOURCE:LINE: problem" for bad
// JSON, invalid UTF-8, an unknown shape, wrong types, empty messages, a conversation with no
// assistant turn, and for anything the encoder rejects.
Example parse_example_line(std::string_view line, const ExampleEncoder& encoder,
                           std::string_view source, int64_t line_number);

struct DatasetLoadOptions {
  ThreadPool* pool = nullptr;  // tokenize lines in parallel (results do not depend on it)
  bool show_progress = false;  // a progress bar on stderr
};

// Every non-blank line of a JSONL file as an example, in file order. Blank lines (only spaces,
// tabs, CR) are skipped; a UTF-8 byte order mark at the start and CRLF line ends are accepted.
// The first malformed line (lowest line number) is the error; a file with no examples is an
// error too.
std::vector<Example> load_jsonl_examples(const std::filesystem::path& path,
                                         const ExampleEncoder& encoder,
                                         const DatasetLoadOptions& options = {});

}  // namespace llamaq
