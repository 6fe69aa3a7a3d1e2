// llamaq bench: prefill and decode speed of a checkpoint or a preset shape (random weights made in
// memory), per weight format, with each figure next to its roofline quantity (bytes moved per
// decoded token, FLOPs per prompt token), as a table and optionally JSON.
#include <nlohmann/json.hpp>

#include <ctime>
#include <iostream>
#include <random>
#include <sstream>

#include "cli_common.h"
#include "commands.h"
#include "core/error.h"
#include "core/resources.h"
#include "core/thread_pool.h"
#include "io/atomic_file.h"
#include "model/random_checkpoint.h"
#include "quant/nf4_codec.h"
#include "model/weights.h"
#include "runtime/sampler.h"

namespace llamaq::cli {
namespace {

struct BenchOptions {
  std::string model_dir;
  std::string preset;
  std::string device = "cpu";
  std::string weights = "bf16,nf4";
  int64_t prompt = 512;
  int64_t gen = 64;
  int threads = 0;
  bool quant_lm_head = false;
  std::string json_file;
};

struct BenchRow {
  std::string weights;
  double prefill_tokens_per_s = 0;
  double ttft_ms = 0;
  double decode_tokens_per_s = 0;
  double weight_gib = 0;         // bytes a decode step reads (projections + head)
  double decode_gb_per_s = 0;    // weight bytes x decode tokens/s
  double prefill_tflop_per_s = 0;
  double prefill_cpu_s = 0;  // process CPU time (all threads, spin-waits included)
  double decode_cpu_s = 0;
};

// CPU seconds this process has used so far, all threads. On a machine shared with other work,
// tokens per CPU-second show what the code does with the time it gets.
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

int64_t linear_params(const LlamaWeights& w) {
  int64_t n = w.lm_head.out_features() * w.lm_head.in_features();
  for (const LayerWeights& l : w.layers) {
    for (const LinearWeight* p : {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      n += p->out_features() * p->in_features();
    }
  }
  return n;
}

int64_t linear_bytes(const LlamaWeights& w) {
  int64_t n = w.lm_head.nbytes();
  for (const LayerWeights& l : w.layers) {
    for (const LinearWeight* p : {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      n += p->nbytes();
    }
  }
  return n;
}

BenchRow run_one(const BenchOptions& o, const LlamaConfig& config, LlamaWeights weights,
                 const std::string& format, Backend& backend) {
  if (format == "nf4") {
    LoadOptions quant;
    quant.quantize_nf4 = true;
    quant.quantize_lm_head = o.quant_lm_head;
    quant.threads = o.threads;
    quant.progress = true;
    quantize_weights(weights, quant);
    if (o.quant_lm_head && !weights.lm_head.quantized()) {
      // A tied head is the embedding table, which the loader keeps dense; the bench quantizes a
      // head of its own (the table stays bf16 for the embedding lookup), as llama.cpp keeps a
      // separately quantized output matrix.
      ThreadPool pool(o.threads);
      weights.lm_head = LinearWeight::quantized(std::make_shared<nf4::Nf4Weight>(
          nf4::quantize(weights.lm_head.weight, quant.double_quant, pool)));
    }
  } else if (format != "bf16") {
    fail("--weights: unknown format \"{}\" (bf16 or nf4)", format);
  }
  BenchRow row;
  row.weights = format == "nf4" && o.quant_lm_head ? "nf4 (+lm_head)" : format;
  row.weight_gib = double(linear_bytes(weights)) / double(1 << 30);
  LlamaModel model(config, weights, backend);
  KvCache cache(backend, config, o.prompt + o.gen + 8);
  std::mt19937 rng(7);
  std::vector<int32_t> prompt(static_cast<size_t>(o.prompt));
  for (int32_t& id : prompt) id = int32_t(rng() % uint32_t(config.vocab_size));
  {  // warm-up: module loading, handles, allocator
    const int seq = cache.add_sequence();
    model.forward_to_host(cache, seq, std::span(prompt).first(std::min<size_t>(8, prompt.size())), LogitsFor::LastToken);
    cache.remove_sequence(seq);
  }
  const int seq = cache.add_sequence();
  const double cpu_before_prefill = process_cpu_seconds();
  const Stopwatch prefill;
  std::vector<float> logits = model.forward_to_host(cache, seq, prompt, LogitsFor::LastToken);
  const double prefill_s = prefill.seconds();
  row.prefill_cpu_s = process_cpu_seconds() - cpu_before_prefill;
  const double cpu_before_decode = process_cpu_seconds();
  const Stopwatch decode;
  for (int64_t i = 0; i < o.gen; ++i) {
    const int32_t next[1] = {argmax(logits)};
    logits = model.forward_to_host(cache, seq, next, LogitsFor::LastToken);
  }
  const double decode_s = decode.seconds();
  row.decode_cpu_s = process_cpu_seconds() - cpu_before_decode;
  row.prefill_tokens_per_s = double(o.prompt) / prefill_s;
  row.ttft_ms = prefill_s * 1e3;
  row.decode_tokens_per_s = double(o.gen) / decode_s;
  row.decode_gb_per_s = double(linear_bytes(weights)) * row.decode_tokens_per_s / 1e9;
  row.prefill_tflop_per_s = 2.0 * double(linear_params(weights)) * row.prefill_tokens_per_s / 1e12;
  return row;
}

// The host's memory bandwidth as STREAM's triad measures it (a = b + s * c over arrays far
// larger than the caches, counted as 3 x 4 bytes per element), best of five passes on the
// bench's threads: the roofline a CPU decode is held against.
double host_triad_gb_per_s(int threads) {
  constexpr int64_t kElements = int64_t(1) << 25;  // 128 MiB per array
  std::vector<float> a(kElements), b(kElements, 1.0f), c(kElements, 2.0f);
  ThreadPool pool(threads);
  double best = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const Stopwatch clock;
    pool.parallel_for(kElements, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) a[size_t(i)] = b[size_t(i)] + 3.0f * c[size_t(i)];
    });
    best = std::max(best, 3.0 * 4.0 * double(kElements) / clock.seconds() / 1e9);
  }
  if (a[size_t(kElements / 2)] != 7.0f) fail("bench: the bandwidth probe computed a wrong sum");
  return best;
}

void run(const BenchOptions& o) {
  if (o.model_dir.empty() == o.preset.empty()) fail("give exactly one of --model and --preset");
  ModelOptions model_options;
  model_options.device = o.device;
  model_options.threads = o.threads;
  std::unique_ptr<Backend> backend = make_backend(model_options);
  LlamaConfig config;
  LlamaWeights weights;
  std::optional<CheckpointTensors> checkpoint;
  if (!o.preset.empty()) {
    config = parse_llama_config(preset_config(o.preset).dump(), o.preset);
    log_line("making random " + o.preset + " weights in memory");
    weights = random_weights(config, 1, o.threads);
  } else {
    config = load_llama_config(std::filesystem::path(o.model_dir) / "config.json");
    checkpoint.emplace(CheckpointTensors::open(o.model_dir));
    weights = bind_llama_weights(config, *checkpoint);
  }
  std::vector<BenchRow> rows;
  std::stringstream formats(o.weights);
  for (std::string format; std::getline(formats, format, ',');) {
    rows.push_back(run_one(o, config, weights, format, *backend));
  }
  std::cout << fmt::format("\n{} on {} ({}), prompt {} tokens, {} decoded tokens, batch 1\n",
                           o.preset.empty() ? o.model_dir : o.preset, backend->name(), o.device, o.prompt, o.gen);
  std::cout << "| weights | prefill tok/s | TTFT ms | prefill TFLOP/s | decode tok/s | weights GiB | decode GB/s |\n"
               "|---|---|---|---|---|---|---|\n";
  nlohmann::json json = nlohmann::json::array();
  for (const BenchRow& r : rows) {
    std::cout << fmt::format("| {} | {:.1f} | {:.1f} | {:.2f} | {:.2f} | {:.2f} | {:.1f} |\n", r.weights,
                             r.prefill_tokens_per_s, r.ttft_ms, r.prefill_tflop_per_s,
                             r.decode_tokens_per_s, r.weight_gib, r.decode_gb_per_s);
    json.push_back({{"weights", r.weights}, {"device", o.device}, {"prompt", o.prompt}, {"gen", o.gen},
                    {"prefill_tokens_per_s", r.prefill_tokens_per_s}, {"ttft_ms", r.ttft_ms},
                    {"prefill_tflop_per_s", r.prefill_tflop_per_s},
                    {"decode_tokens_per_s", r.decode_tokens_per_s}, {"weight_gib", r.weight_gib},
                    {"decode_gb_per_s", r.decode_gb_per_s}});
  }
  if (o.device == "cpu") {
    const double triad = host_triad_gb_per_s(o.threads);
    std::cout << fmt::format("host memory bandwidth (STREAM triad, same threads) {:.1f} GB/s\n", triad);
    for (size_t i = 0; i < rows.size(); ++i) {
      const BenchRow& r = rows[i];
      std::cout << fmt::format("{} decode reaches {:.0f}% of it\n", r.weights,
                               100.0 * r.decode_gb_per_s / triad);
      std::cout << fmt::format(
          "{} CPU time: prefill {:.2f} s ({:.1f} tokens per CPU-second), decode {:.2f} s ({:.2f} "
          "tokens per CPU-second)\n",
          r.weights, r.prefill_cpu_s, double(o.prompt) / r.prefill_cpu_s, r.decode_cpu_s,
          double(o.gen) / r.decode_cpu_s);
      json[i]["prefill_cpu_s"] = r.prefill_cpu_s;
      json[i]["decode_cpu_s"] = r.decode_cpu_s;
      json[i]["host_triad_gb_per_s"] = triad;
      json[i]["decode_bandwidth_fraction"] = rows[i].decode_gb_per_s / triad;
    }
  }
  std::cout << fmt::format("peak host memory {:.1f} MiB", double(peak_resident_bytes()) / (1 << 20)) << std::endl;
  if (!o.json_file.empty()) write_file_atomic(o.json_file, json.dump(2) + "\n");
}

}  // namespace

void register_bench(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "Prefill and decode speed, per weight format");
  cmd->add_option("-m,--model", o->model_dir, "Checkpoint folder");
  cmd->add_option("--preset", o->preset, "Random weights of a real shape: llama3-8b, llama3.1-8b, llama3.2-1b, llama3.2-3b");
  cmd->add_option("--device", o->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--weights", o->weights, "Comma-separated formats: bf16, nf4");
  cmd->add_option("--prompt", o->prompt, "Prompt tokens")->check(CLI::PositiveNumber);
  cmd->add_option("--gen", o->gen, "Decoded tokens")->check(CLI::PositiveNumber);
  cmd->add_option("-t,--threads", o->threads, "CPU threads (0 = all)");
  cmd->add_flag("--quant-lm-head", o->quant_lm_head,
                "With nf4, quantize the LM head too (its bf16 copy is the largest read of a small model)");
  cmd->add_option("--json", o->json_file, "Also write the results as JSON");
  cmd->callback([o] { run(*o); });
}

}  // namespace llamaq::cli
