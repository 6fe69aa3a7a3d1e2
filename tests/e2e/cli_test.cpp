// End-to-end tests of the llamaq binary: logits and generate on the fixture models, flags,
// output files and error messages.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <sys/wait.h>

#include "io/safetensors.h"
#include "test_util.h"

namespace llamaq {
namespace {

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

RunResult run_cli(const std::string& args) {
  test::TempDir dir;
  const std::string command =
      std::string(LLAMAQ_CLI) + " " + args + " 2>" + (dir / "stderr").string();
  RunResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return result;
  char buffer[65536];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.out.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.err = test::read_bytes(dir / "stderr");
  return result;
}

std::string model_arg(const std::string& name) { return "--model " + test::model_dir(name).string(); }

std::string join(const std::vector<int32_t>& ids, const char* sep) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? sep : "") + std::to_string(ids[i]);
  return out;
}

struct Reference {
  SafetensorsFile file = SafetensorsFile::open(test::model_dir("tiny-llama31") / "reference.safetensors");
  std::vector<int32_t> ids(int length) const {
    const auto d = test::to_doubles(file.tensor("input_ids_" + std::to_string(length)));
    return {d.begin(), d.end()};
  }
};

// Same bound as the golden tests: fp32 compute against the float64 reference.
constexpr double kTolerance = 1e-4;

TEST(Cli, LogitsAsJsonMatchTheReference) {
  Reference ref;
  const auto r = run_cli("logits " + model_arg("tiny-llama31") + " --ids " + join(ref.ids(7), ",") +
                         " --all-positions");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto json = nlohmann::json::parse(r.out);
  EXPECT_EQ(json["vocab_size"], 512);
  EXPECT_EQ(json["positions"].size(), 7u);
  std::vector<double> logits;
  for (const auto& row : json["logits"]) {
    for (double x : row) logits.push_back(x);
  }
  EXPECT_LE(test::relative_error(logits, test::to_doubles(ref.file.tensor("logits_7"))), kTolerance);
}

TEST(Cli, LogitsToASafetensorsFile) {
  Reference ref;
  test::TempDir dir;
  const auto out = dir / "logits.safetensors";
  const auto r = run_cli("logits " + model_arg("tiny-llama31") + " --ids \"" + join(ref.ids(64), " ") + "\"" +
                         " --out " + out.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto file = SafetensorsFile::open(out);
  const Tensor logits = file.tensor("logits");
  EXPECT_EQ(logits.shape(), (Shape{1, 512}));
  const auto all = test::to_doubles(ref.file.tensor("logits_64"));
  const std::vector<double> last(all.end() - 512, all.end());
  EXPECT_LE(test::relative_error(test::to_doubles(logits), last), kTolerance);
  EXPECT_EQ(test::to_doubles(file.tensor("input_ids")).size(), 64u);
}

TEST(Cli, GreedyGenerateStreamsTheReferenceContinuation) {
  const auto json = nlohmann::json::parse(test::read_bytes(test::model_dir("tiny-llama31") / "reference.json"));
  const auto& greedy = json["greedy"][0];
  const auto prompt = greedy["prompt"].get<std::vector<int32_t>>();
  const auto want = greedy["new_tokens"].get<std::vector<int32_t>>();
  const auto r = run_cli("generate " + model_arg("tiny-llama31") + " --ids " + join(prompt, ",") +
                         " -n 24 --temp 0 --ignore-eos");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Every margin of this case is >= 1e-2 (checked by the golden test), so all 24 must match.
  for (double margin : greedy["top2_margins"]) ASSERT_GE(margin, 1e-2);
  EXPECT_EQ(r.out, join(want, " ") + "\n");
  EXPECT_NE(r.err.find("prompt: 5 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("generated: 24 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos);
  EXPECT_NE(r.err.find("peak memory"), std::string::npos);
}

TEST(Cli, SeededSamplingIsReproducible) {
  const std::string args = "generate " + model_arg("tiny-hd128-sharded") +
                           " --ids 1,5,9 -n 16 --temp 1.0 --top-p 0.95 --top-k 50 --ignore-eos";
  const auto a = run_cli(args + " --seed 11");
  const auto b = run_cli(args + " --seed 11");
  const auto c = run_cli(args + " --seed 12");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  EXPECT_NE(a.err.find("seed 11"), std::string::npos);
}

TEST(Cli, StopsAtTheEndOfSequenceToken) {
  // tiny-llama31's eos is id 2: greedy output never contains it.
  const auto r = run_cli("generate " + model_arg("tiny-llama31") + " --ids 2,2,2 -n 200 --temp 0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(("" + r.out).find(" 2 "), std::string::npos);
}

TEST(Cli, HelpForEveryCommand) {
  for (const std::string command : {"", "logits ", "generate "}) {
    const auto r = run_cli(command + "--help");
    EXPECT_EQ(r.exit_code, 0) << command;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << command;
  }
}

TEST(Cli, BadInputGivesClearErrors) {
  auto expect_failure = [](const std::string& args, const std::string& message) {
    const auto r = run_cli(args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_NE((r.err + r.out).find(message), std::string::npos) << args << "\n" << r.err;
  };
  const std::string model = model_arg("tiny-llama31");
  expect_failure("logits " + model + " --ids 1,x,3", "\"x\" is not a token id");
  expect_failure("logits " + model + " --ids 1,512", "token id 512 is out of range");
  expect_failure("logits --model /nonexistent --ids 1", "/nonexistent: not a checkpoint folder");
  expect_failure("logits " + model, "--ids is required");
  expect_failure("generate " + model + " --ids 1 --bogus", "--bogus");
  expect_failure("generate " + model + " --ids 1 --top-p 2", "top-p must be in (0, 1]");
  expect_failure("generate " + model + " --ids 1 -n 5 --ctx 3", "do not fit a context of");
  expect_failure("frobnicate", "frobnicate");
}

}  // namespace
}  // namespace llamaq
