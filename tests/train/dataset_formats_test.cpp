// Alpaca and plain-text records, record-shape detection, and loading JSONL files.
#include <gtest/gtest.h>

#include "core/thread_pool.h"
#include "tiny_tokenizer.h"
#include "train_test_support.h"

namespace llamaq::test {
namespace {

constexpr int32_t kBos = 128000;
constexpr int32_t kEndOfText = 128001;
constexpr int32_t kEot = 128009;

const KnownChatTemplate& template_named(std::string_view name) {
  for (const KnownChatTemplate& known : known_chat_templates()) {
    if (known.name == name) return known;
  }
  throw std::runtime_error("no template " + std::string(name));
}

Example parse(const ExampleEncoder& encoder, std::string_view line) {
  return parse_example_line(line, encoder, "test.jsonl", 1);
}

TEST(AlpacaExamples, ChatFormatPutsInstructionAndInputInTheUserTurn) {
  const Tokenizer tokenizer = real_tokenizer("llama3_1");
  const ExampleEncoder encoder(tokenizer);
  const Example example = encoder.encode_alpaca("Translate to French.", "cat", "chat");
  const std::vector<ChatMessage> as_chat = {{"user", "Translate to French.\n\ncat"},
                                            {"assistant", "chat"}};
  EXPECT_EQ(example.input_ids, tokenizer.encode_chat(as_chat, false));
  EXPECT_EQ(trainable_spans(tokenizer, example), std::vector<std::string>{"chat<|eot_id|>"});
  const Example no_input = encoder.encode_alpaca("Say hi.", "", "Hi!");
  const std::vector<ChatMessage> no_input_chat = {{"user", "Say hi."}, {"assistant", "Hi!"}};
  EXPECT_EQ(no_input.input_ids, tokenizer.encode_chat(no_input_chat, false));
}

TEST(AlpacaExamples, PromptTemplateMasksThePromptAndTrainsOutputAndEos) {
  const Tokenizer tokenizer = real_tokenizer("llama3_1");
  ExampleEncoderOptions options;
  options.alpaca_template = AlpacaTemplate::kAlpacaPrompt;
  const ExampleEncoder encoder(tokenizer, options);
  const Example example = encoder.encode_alpaca("Add the numbers.", "2 and 3", "5");
  EXPECT_EQ(masked_text(tokenizer, example),
            "<|begin_of_text|>Below is an instruction that describes a task, paired with an input "
            "that provides further context. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### "
            "Response:\n");
  EXPECT_EQ(trainable_spans(tokenizer, example), std::vector<std::string>{"5<|eot_id|>"});
  EXPECT_EQ(example.input_ids.front(), kBos);
  EXPECT_EQ(example.input_ids.back(), encoder.eos_id());

  const Example no_input = encoder.encode_alpaca("Greet me.", "", "Hello.");
  EXPECT_EQ(masked_text(tokenizer, no_input),
            "<|begin_of_text|>Below is an instruction that describes a task. Write a response "
            "that appropriately completes the request.\n\n### Instruction:\nGreet me.\n\n### "
            "Response:\n");
}

TEST(AlpacaExamples, AutoUsesThePromptTemplateWithoutAChatTemplate) {
  const Tokenizer tokenizer = tiny_tokenizer(nullptr);
  const Example example = ExampleEncoder(tokenizer).encode_alpaca("in", "", "out");
  EXPECT_EQ(trainable_spans(tokenizer, example), std::vector<std::string>{"out<|eot_id|>"});
  EXPECT_NE(masked_text(tokenizer, example).find("### Response:\n"), std::string::npos);
  ExampleEncoderOptions chat_only;
  chat_only.alpaca_template = AlpacaTemplate::kChat;
  expect_error([&] { ExampleEncoder(tokenizer, chat_only).encode_alpaca("in", "", "out"); },
               {"chat template"});
}

TEST(AlpacaExamples, NullOrMissingInputMeansNoInput) {
  const ExampleEncoder encoder(real_tokenizer("llama3_1"));
  const Example with_null =
      parse(encoder, R"({"instruction": "Hi", "input": null, "output": "Yo"})");
  const Example without = parse(encoder, R"({"instruction": "Hi", "output": "Yo"})");
  const Example empty = parse(encoder, R"({"instruction": "Hi", "input": "", "output": "Yo"})");
  EXPECT_EQ(with_null.input_ids, without.input_ids);
  EXPECT_EQ(empty.input_ids, without.input_ids);
}

TEST(TextExamples, BosTextEosWithLossEverywhere) {
  const Tokenizer tokenizer = real_tokenizer("llama3");
  const ExampleEncoder encoder(tokenizer);
  const Example example = encoder.encode_text("Hello world <|eot_id|>");
  std::vector<int32_t> expected = {kBos};
  const std::vector<int32_t> body = tokenizer.encode("Hello world <|eot_id|>", false);
  expected.insert(expected.end(), body.begin(), body.end());
  expected.push_back(kEndOfText);  // llama3's tokenizer_config eos_token
  EXPECT_EQ(example.input_ids, expected);
  EXPECT_EQ(example.labels, expected);
  EXPECT_EQ(count_loss_tokens(example.labels), int64_t(expected.size()) - 1);
}

TEST(TextExamples, EosFollowsTheTokenizerConfigOrTheOption) {
  EXPECT_EQ(ExampleEncoder(real_tokenizer("llama3")).eos_id(), kEndOfText);
  EXPECT_EQ(ExampleEncoder(real_tokenizer("llama3_1")).eos_id(), kEot);
  ExampleEncoderOptions options;
  options.eos_id = kEndOfText;
  const ExampleEncoder encoder(real_tokenizer("llama3_1"), options);
  EXPECT_EQ(encoder.encode_text("x").input_ids.back(), kEndOfText);
  options.eos_id = 1 << 30;
  expect_error([&] { ExampleEncoder(real_tokenizer("llama3_1"), options); }, {"1073741824"});
}

TEST(TextExamples, PadIdPrefersTheFinetunePadToken) {
  EXPECT_EQ(ExampleEncoder(tiny_tokenizer(nullptr)).pad_id(), 305);
  EXPECT_EQ(ExampleEncoder(real_tokenizer("llama3_1")).pad_id(), kEot);  // no such token here
}

TEST(RecordShapes, MessagesWinOverAlpacaWhichWinsOverTextAndOtherKeysAreIgnored) {
  const Tokenizer tokenizer = tiny_tokenizer(&template_named("llama3.1"));
  const ExampleEncoder encoder(tokenizer);
  const Example chat = parse(
      encoder,
      R"({"id": 7, "text": "t", "output": "o", "instruction": "i", "messages": [{"role": "user", "content": "u", "name": "x"}, {"role": "assistant", "content": "a"}]})");
  EXPECT_EQ(trainable_spans(tokenizer, chat), std::vector<std::string>{"a<|eot_id|>"});
  const Example alpaca = parse(encoder, R"({"text": "t", "instruction": "i", "output": "o"})");
  EXPECT_EQ(trainable_spans(tokenizer, alpaca), std::vector<std::string>{"o<|eot_id|>"});
  const Example text = parse(encoder, R"({"source": "web", "text": "plain"})");
  EXPECT_EQ(trainable_spans(tokenizer, text),
            std::vector<std::string>{"<|begin_of_text|>plain<|eot_id|>"});
  EXPECT_EQ(text.line, 1);
}

TEST(CountLossTokens, PositionZeroIsNeverATarget) {
  EXPECT_EQ(count_loss_tokens(std::vector<int32_t>{}), 0);
  EXPECT_EQ(count_loss_tokens(std::vector<int32_t>{5}), 0);
  EXPECT_EQ(count_loss_tokens(std::vector<int32_t>{5, 6, kIgnoreIndex, 7}), 2);
  EXPECT_EQ(count_loss_tokens(std::vector<int32_t>{kIgnoreIndex, kIgnoreIndex, 1}), 1);
}

TEST(LoadJsonl, BundledTinyChatSet) {
  const Tokenizer tokenizer = real_tokenizer("llama3");
  const std::vector<Example> examples =
      load_jsonl_examples(train_data_dir() / "tiny-chat.jsonl", ExampleEncoder(tokenizer));
  ASSERT_EQ(examples.size(), 16u);
  for (size_t i = 0; i < examples.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(examples[i].line, int64_t(i) + 1);
    const std::vector<std::string> spans = trainable_spans(tokenizer, examples[i]);
    ASSERT_EQ(spans.size(), 1u);
    const std::string answer = spans[0].substr(0, spans[0].size() - 10);  // minus <|eot_id|>
    const auto words = std::count(answer.begin(), answer.end(), ' ') + 1;
    EXPECT_GE(words, 5);
    EXPECT_LE(words, 20);
    EXPECT_LE(examples[i].input_ids.size(), 64u);
  }
}

TEST(LoadJsonl, BundledAlpacaAndTextSamples) {
  const Tokenizer tokenizer = real_tokenizer("llama3_1");
  const ExampleEncoder encoder(tokenizer);
  const std::vector<Example> alpaca =
      load_jsonl_examples(train_data_dir() / "alpaca-sample.jsonl", encoder);
  ASSERT_EQ(alpaca.size(), 4u);
  EXPECT_EQ(trainable_spans(tokenizer, alpaca[0]), std::vector<std::string>{"chat<|eot_id|>"});
  const std::vector<Example> text =
      load_jsonl_examples(train_data_dir() / "text-sample.jsonl", encoder);
  ASSERT_EQ(text.size(), 3u);
  EXPECT_EQ(trainable_spans(tokenizer, text[2]),
            std::vector<std::string>{
                "<|begin_of_text|>Caf\xC3\xA9 au lait \xE2\x80\x94 warm milk and coffee "
                "\xE2\x98\x95.<|eot_id|>"});
}

TEST(LoadJsonl, ByteOrderMarkCrLfAndBlankLinesKeepLineNumbers) {
  TempDir dir;
  write_bytes(dir / "data.jsonl",
              "\xEF\xBB\xBF{\"text\": \"one\"}\r\n\r\n  \t\n{\"text\": \"two\"}\n\n{\"text\": "
              "\"three\"}");
  const std::vector<Example> examples =
      load_jsonl_examples(dir / "data.jsonl", ExampleEncoder(tiny_tokenizer(nullptr)));
  ASSERT_EQ(examples.size(), 3u);
  EXPECT_EQ(examples[0].line, 1);
  EXPECT_EQ(examples[1].line, 4);
  EXPECT_EQ(examples[2].line, 6);
}

TEST(LoadJsonl, ThreadPoolGivesTheSameExamplesAndTheFirstError) {
  TempDir dir;
  std::string lines;
  for (int i = 0; i < 3000; ++i) {
    lines += i % 3 ? fmt::format("{{\"text\": \"line {}\"}}\n", i)
                   : fmt::format(R"({{"instruction": "n{}", "output": "o"}})"
                                 "\n",
                                 i);
  }
  write_bytes(dir / "good.jsonl", lines);
  const ExampleEncoder encoder(tiny_tokenizer(&template_named("llama3")));
  ThreadPool pool(3);
  const std::vector<Example> serial = load_jsonl_examples(dir / "good.jsonl", encoder);
  const std::vector<Example> parallel = load_jsonl_examples(dir / "good.jsonl", encoder, {&pool});
  ASSERT_EQ(serial.size(), parallel.size());
  for (size_t i = 0; i < serial.size(); ++i) {
    EXPECT_EQ(serial[i].input_ids, parallel[i].input_ids);
    EXPECT_EQ(serial[i].labels, parallel[i].labels);
    EXPECT_EQ(serial[i].line, parallel[i].line);
  }
  // Bad lines at 1500, 1700 and 2900: the error names the first one.
  std::string bad = lines;
  for (const int line : {2900, 1700, 1500}) {
    size_t begin = 0;
    for (int l = 1; l < line; ++l)
      begin = bad.find('\n', begin) + 1;
    bad.insert(begin, "{\"text\": 1}\n");
  }
  write_bytes(dir / "bad.jsonl", bad);
  expect_error([&] { load_jsonl_examples(dir / "bad.jsonl", encoder, {&pool}); },
               {"bad.jsonl:1500:"});
}

}  // namespace
}  // namespace llamaq::test
