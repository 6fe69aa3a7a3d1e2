// llamaq logits: the forward pass for a list of token ids, logits out as JSON or safetensors.
#include <nlohmann/json.hpp>

#include <iostream>

#include <fmt/format.h>

#include "cli_common.h"
#include "commands.h"
#include "io/safetensors.h"

namespace llamaq::cli {
namespace {

struct LogitsOptions {
  ModelOptions model;
  std::string ids;
  bool all_positions = false;
  std::string out = "-";
};

void write_json(const std::vector<int32_t>& ids, const std::vector<float>& logits, int64_t rows,
                int64_t vocab) {
  nlohmann::json out;
  out["ids"] = ids;
  out["vocab_size"] = vocab;
  std::vector<int64_t> positions;
  for (int64_t r = 0; r < rows; ++r) positions.push_back(int64_t(ids.size()) - rows + r);
  out["positions"] = positions;
  nlohmann::json rows_json = nlohmann::json::array();
  for (int64_t r = 0; r < rows; ++r) {
    rows_json.push_back(std::vector<float>(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab));
  }
  out["logits"] = std::move(rows_json);
  std::cout << out.dump() << std::endl;
}

void write_file(const std::string& path, const std::vector<int32_t>& ids,
                const std::vector<float>& logits, int64_t rows, int64_t vocab) {
  std::vector<SafetensorsTensorData> tensors = {
      {"logits", DType::F32, {rows, vocab},
       {reinterpret_cast<const uint8_t*>(logits.data()), logits.size() * sizeof(float)}},
      {"input_ids", DType::I32, {int64_t(ids.size())},
       {reinterpret_cast<const uint8_t*>(ids.data()), ids.size() * sizeof(int32_t)}},
  };
  write_safetensors(path, std::move(tensors));
  log_line(fmt::format("wrote logits [{}, {}] to {}", rows, vocab, path));
}

void run(const LogitsOptions& o) {
  const std::vector<int32_t> ids = parse_token_ids(o.ids, "--ids");
  Engine engine = load_engine(o.model);
  LlamaModel& model = *engine.loaded.model;
  KvCache cache(*engine.backend, model.config(), int64_t(ids.size()));
  const int seq = cache.add_sequence();
  const LogitsFor which = o.all_positions ? LogitsFor::AllTokens : LogitsFor::LastToken;
  const std::vector<float> logits = model.forward_to_host(cache, seq, ids, which);
  const int64_t vocab = model.config().vocab_size;
  const int64_t rows = int64_t(logits.size()) / vocab;
  if (o.out == "-") {
    write_json(ids, logits, rows, vocab);
  } else {
    write_file(o.out, ids, logits, rows, vocab);
  }
}

}  // namespace

void register_logits(CLI::App& app) {
  auto options = std::make_shared<LogitsOptions>();
  CLI::App* cmd = app.add_subcommand("logits", "Run the forward pass and print or save logits");
  add_model_options(*cmd, options->model);
  cmd->add_option("--ids", options->ids, "Input token ids, e.g. 1,2,3")->required();
  cmd->add_flag("--all-positions", options->all_positions,
                "Logits for every position (default: the last one)");
  cmd->add_option("-o,--out", options->out,
                  "'-' for JSON on stdout, or a .safetensors file (tensors logits, input_ids)");
  cmd->callback([options] { run(*options); });
}

}  // namespace llamaq::cli
