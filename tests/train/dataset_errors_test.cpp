// Malformed training data: every bad line is an error naming the file and its line number.
#include <gtest/gtest.h>

#include "tiny_tokenizer.h"
#include "train_test_support.h"

namespace llamaq::test {
namespace {

struct BadFile {
  const char* name;  // tests/data/train/bad/<name>.jsonl
  int line;
  const char* problem;
};

class BadTrainingData : public testing::TestWithParam<BadFile> {};

const ExampleEncoder& encoder() {
  static const ExampleEncoder instance(tiny_tokenizer(&known_chat_templates()[2]));  // llama3.1
  return instance;
}

TEST_P(BadTrainingData, ErrorNamesFileLineAndProblem) {
  const BadFile& bad = GetParam();
  const std::string file = std::string(bad.name) + ".jsonl";
  expect_error([&] { load_jsonl_examples(train_data_dir() / "bad" / file, encoder()); },
               {file + ":" + std::to_string(bad.line) + ": ", bad.problem});
}

INSTANTIATE_TEST_SUITE_P(
    Files, BadTrainingData,
    testing::Values(
        BadFile{"bad-json", 3, "invalid JSON (column"},
        BadFile{"trailing-garbage", 2, "invalid JSON"},
        BadFile{"invalid-utf8", 2, "not valid UTF-8 (ill-formed byte sequence at column 14)"},
        BadFile{"not-object", 3, "expected a JSON object, not array"},
        BadFile{"unknown-shape", 2, "unknown record shape"},
        BadFile{"messages-not-array", 1, "\"messages\" must be an array, not string"},
        BadFile{"empty-messages", 2, "\"messages\" is empty"},
        BadFile{"message-not-object", 3, "messages[0] must be an object, not string"},
        BadFile{"missing-role", 1, "messages[0] has no \"role\""},
        BadFile{"content-not-string", 2, "messages[0] \"content\" must be a string, not number"},
        BadFile{"unsupported-role", 2, "messages[1]: role \"tool\" is not supported"},
        BadFile{"no-assistant", 4, "no assistant message"},
        BadFile{"assistant-first", 1, "starts with an assistant message"},
        BadFile{"alpaca-missing-output", 2, "the Alpaca record has no \"output\""},
        BadFile{"alpaca-input-not-string", 1, "\"input\" must be a string, not array"},
        BadFile{"text-not-string", 4, "\"text\" must be a string, not null"},
        BadFile{"empty-text", 1, "\"text\" is empty"}),
    [](const testing::TestParamInfo<BadFile>& param_info) {
      std::string name = param_info.param.name;
      std::replace(name.begin(), name.end(), '-', '_');
      return name;
    });

TEST(BadTrainingDataFiles, EveryFileInTheFolderIsCovered) {
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(train_data_dir() / "bad")) {
    static_cast<void>(entry);
    ++files;
  }
  EXPECT_EQ(files, 17);
}

TEST(BadTrainingDataFiles, MissingAndEmptyFiles) {
  expect_error([&] { load_jsonl_examples("/nonexistent/data.jsonl", encoder()); },
               {"cannot open training data /nonexistent/data.jsonl"});
  TempDir dir;
  write_bytes(dir / "blank.jsonl", "\n  \n\r\n");
  expect_error([&] { load_jsonl_examples(dir / "blank.jsonl", encoder()); },
               {"blank.jsonl has no examples"});
}

TEST(ParseExampleLine, NamesTheGivenSourceAndLine) {
  expect_error([&] { parse_example_line("{", encoder(), "stdin", 42); },
               {"stdin:42: invalid JSON"});
  expect_error([&] { parse_example_line(R"({"text": "\ud800"})", encoder(), "x", 7); },
               {"x:7: invalid JSON"});
  expect_error([&] { parse_example_line("{}", encoder(), "x", 8); }, {"x:8:", "the keys are none"});
  expect_error(
      [&] {
        parse_example_line(R"({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6})", encoder(), "x",
                           9);
      },
      {R"(the keys are "a", "b", "c", "d", "e", ...)"});
}

TEST(ParseExampleLine, ChatDataNeedsAChatTemplate) {
  const ExampleEncoder no_template(tiny_tokenizer(nullptr));
  expect_error(
      [&] {
        parse_example_line(
            R"({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]})",
            no_template, "d.jsonl", 3);
      },
      {"d.jsonl:3: chat records need a chat template"});
}

}  // namespace
}  // namespace llamaq::test
