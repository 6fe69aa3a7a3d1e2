// llamaq bench: prefill and decode speed of a checkpoint or a preset shape (random weights made in
// memory), for every combination of weight format, attention kernel, prompt length and batch
// size, with each figure next to its roofline (weight bytes per decode step against the measured
// memory bandwidth; FLOPs per prompt token against the measured tensor-core rate) and the peak
// memory, as a table and optionally JSON. --profile writes the per-op trace of the whole run.
// --repeat N measures each case N times (prefill and decode each) and reports the medians; the
// JSON keeps every run.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <iostream>
#include <random>

#include "bench_roofline.h"
#include "bench_train.h"
#include "cli_common.h"
#include "commands.h"
#include "core/error.h"
#include "core/resources.h"
#include "core/thread_pool.h"
#include "io/atomic_file.h"
#include "model/random_checkpoint.h"
#include "model/weights.h"
#include "quant/nf4_codec.h"
#include "runtime/profiler.h"

namespace llamaq::cli {
namespace {

struct BenchOptions {
  ModelOptions model;  // model_dir, device, threads, no_graphs, profile_path
  std::string preset;
  std::string weights = "bf16,nf4";
  std::string attn = "flash";
  std::string prompts = "512";
  std::string batches = "1";
  int64_t gen = 64;
  int64_t prefill_chunk = 512;  // prompt tokens per forward call, as generate and serve chunk
  int repeat = 1;               // measurements per case; the table shows their medians
  std::string json_file;
  TrainBenchOptions train;
};

struct BenchCase {
  std::string weights, attn;
  int64_t prompt = 0, batch = 1;
};

struct BenchRow {
  BenchCase c;
  double prefill_tokens_per_s = 0;
  double ttft_ms = 0;              // prefill of one sequence's prompt up to its first token
  double decode_tokens_per_s = 0;  // all sequences of the batch together
  double weight_gib = 0;           // bytes a decode step reads (projections + head)
  double decode_gb_per_s = 0;      // weight bytes x decode steps/s
  double prefill_tflop_per_s = 0;
  double peak_memory_gib = 0;  // device: peak held by the allocator; CPU: peak RSS
  std::vector<double> prefill_runs, decode_runs;  // tokens/s of each measurement
};

// One measurement of a case: prefill of every sequence's prompt, then o.gen decode steps.
struct CaseTiming {
  double prefill_s = 0, decode_s = 0;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

std::vector<int64_t> split_numbers(const std::string& text, const std::string& flag) {
  std::vector<int64_t> numbers;
  for (const int32_t v : parse_token_ids(text, flag)) {
    if (v <= 0) fail("{}: {} is not a positive number", flag, v);
    numbers.push_back(v);
  }
  return numbers;
}

std::vector<const LinearWeight*> projections(const LlamaWeights& w) {
  std::vector<const LinearWeight*> all = {&w.lm_head};
  for (const LayerWeights& l : w.layers) {
    for (const LinearWeight* p :
         {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      all.push_back(p);
    }
  }
  return all;
}

int64_t linear_params(const LlamaWeights& w) {
  int64_t n = 0;
  for (const LinearWeight* p : projections(w))
    n += p->out_features() * p->in_features();
  return n;
}

int64_t linear_bytes(const LlamaWeights& w) {
  int64_t n = 0;
  for (const LinearWeight* p : projections(w))
    n += p->nbytes();
  return n;
}

// Attention FLOPs of a causal prefill of n tokens: QK^T and PV over n(n+1)/2 query-key pairs.
double attention_flops(const LlamaConfig& c, int64_t n) {
  return 4.0 * double(c.num_hidden_layers) * double(c.q_dim()) * double(n) * double(n + 1) / 2;
}

std::vector<int32_t> random_prompt(const LlamaConfig& config, int64_t length, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> prompt(static_cast<size_t>(length));
  for (int32_t& id : prompt)
    id = int32_t(rng() % uint32_t(config.vocab_size));
  return prompt;
}

void region(Backend& backend, const std::string& name) {
  if (auto* p = dynamic_cast<ProfilingBackend*>(&backend)) p->begin_region(name);
}

// Greedy next ids of a batch of last-token logits, argmax on the device.
std::vector<int32_t> greedy(Backend& backend, const Tensor& logits) {
  Tensor ids = backend.alloc(DType::I32, {logits.dim(0)});
  backend.argmax(logits, ids);
  std::vector<int32_t> host(size_t(logits.dim(0)));
  backend.copy_to_host(ids, host.data());
  return host;
}

CaseTiming time_case(const BenchOptions& o, const BenchCase& c, const LlamaConfig& config,
                     Backend& backend, LlamaModel& model, KvCache& cache) {
  std::vector<int> seqs;
  std::vector<int32_t> next;
  region(backend, "prefill");
  const Stopwatch prefill;
  for (int64_t b = 0; b < c.batch; ++b) {
    seqs.push_back(cache.add_sequence());
    const std::vector<int32_t> prompt = random_prompt(config, c.prompt, uint32_t(7 + b));
    const std::span<const int32_t> ids(prompt);
    const size_t chunk = size_t(o.prefill_chunk);
    for (size_t begin = 0; begin + chunk < ids.size(); begin += chunk)
      model.forward(cache, seqs.back(), ids.subspan(begin, chunk), LogitsFor::None);
    const size_t last = (ids.size() - 1) / chunk * chunk;
    next.push_back(greedy(
        backend, model.forward(cache, seqs.back(), ids.subspan(last), LogitsFor::LastToken))[0]);
  }
  CaseTiming t;
  t.prefill_s = prefill.seconds();
  region(backend, "decode");
  const Stopwatch decode;
  for (int64_t step = 0; step < o.gen; ++step) {
    std::vector<SequenceInput> items;
    for (size_t b = 0; b < seqs.size(); ++b)
      items.push_back({seqs[b], std::span(&next[b], 1)});
    next = greedy(backend, model.forward_batch(cache, items, LogitsFor::LastToken));
  }
  t.decode_s = decode.seconds();
  if (auto* p = dynamic_cast<ProfilingBackend*>(&backend)) p->end_region();
  for (const int seq : seqs)
    cache.remove_sequence(seq);
  return t;
}

BenchRow run_case(const BenchOptions& o, const BenchCase& c, const LlamaConfig& config,
                  const LlamaWeights& weights, Backend& backend, LlamaModel& model) {
  BenchRow row;
  row.c = c;
  row.weight_gib = double(linear_bytes(weights)) / double(1 << 30);
  // Room for every sequence of the batch (each may grow to prompt + gen).
  const int64_t per_sequence = c.prompt + o.gen + 8;
  KvCache cache(backend, config, c.batch * per_sequence);
  {  // warm-up: module loading, handles, allocator, the decode graph of this batch size
    const int seq = cache.add_sequence();
    const std::vector<int32_t> warm = random_prompt(config, std::min<int64_t>(8, c.prompt), 1);
    model.forward(cache, seq, warm, LogitsFor::LastToken);
    for (int step = 0; step < 2; ++step) {
      const int32_t next[1] = {1};
      greedy(backend, model.forward(cache, seq, next, LogitsFor::LastToken));
    }
    cache.remove_sequence(seq);
  }
  backend.reset_peak_memory();
  std::vector<double> prefill_times, decode_times;
  for (int run = 0; run < o.repeat; ++run) {
    const CaseTiming t = time_case(o, c, config, backend, model, cache);
    prefill_times.push_back(t.prefill_s);
    decode_times.push_back(t.decode_s);
  }
  const double prefill_s = median(prefill_times);
  const double decode_s = median(decode_times);
  const double prompt_tokens = double(c.prompt * c.batch);
  row.prefill_tokens_per_s = prompt_tokens / prefill_s;
  row.ttft_ms = prefill_s * 1e3 / double(c.batch);
  row.decode_tokens_per_s = double(o.gen * c.batch) / decode_s;
  row.decode_gb_per_s = double(linear_bytes(weights)) * double(o.gen) / decode_s / 1e9;
  const double flops = 2.0 * double(linear_params(weights)) * prompt_tokens +
                       double(c.batch) * attention_flops(config, c.prompt);
  row.prefill_tflop_per_s = flops / prefill_s / 1e12;
  for (size_t i = 0; i < prefill_times.size(); ++i) {
    row.prefill_runs.push_back(prompt_tokens / prefill_times[i]);
    row.decode_runs.push_back(double(o.gen * c.batch) / decode_times[i]);
  }
  const MemoryStats memory = backend.memory_stats();
  row.peak_memory_gib =
      double(backend.device() == Device::Cpu ? peak_resident_bytes() : memory.peak_reserved) /
      double(1 << 30);
  return row;
}

LlamaWeights weights_as(const BenchOptions& o, LlamaWeights weights, const std::string& format) {
  if (format == "nf4") {
    LoadOptions quant;
    quant.quantize_nf4 = true;
    quant.quantize_lm_head = o.model.quant_lm_head;
    quant.threads = o.model.threads;
    quant.progress = true;
    quantize_weights(weights, quant);
    if (o.model.quant_lm_head && !weights.lm_head.quantized()) {
      // A tied head is the embedding table, which the loader keeps dense; the bench quantizes a
      // head of its own (the table stays bf16 for the embedding lookup), as llama.cpp keeps a
      // separately quantized output matrix.
      ThreadPool pool(o.model.threads);
      weights.lm_head = LinearWeight::quantized(std::make_shared<nf4::Nf4Weight>(
          nf4::quantize(weights.lm_head.weight, quant.double_quant, pool)));
    }
  } else if (format != "bf16") {
    fail("--weights: unknown format \"{}\" (bf16 or nf4)", format);
  }
  return weights;
}

std::string percent(double value, double peak) {
  return peak > 0 ? fmt::format(" ({:.0f}%)", 100 * value / peak) : "";
}

void print_rows(const BenchOptions& o, const std::vector<BenchRow>& rows, const Roofline& roof,
                const std::string& title) {
  std::cout << "\n" << title << "\nroofline " << roof.how << "\n";
  std::cout << "| weights | attn | prompt | batch | prefill tok/s | TTFT ms | prefill TFLOP/s | "
               "decode tok/s | weights GiB | decode GB/s | peak mem GiB |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const BenchRow& r : rows) {
    std::cout << fmt::format(
        "| {} | {} | {} | {} | {:.1f} | {:.1f} | {:.2f}{} | {:.2f} | {:.2f} | {:.1f}{} | {:.2f} "
        "|\n",
        r.c.weights, r.c.attn, r.c.prompt, r.c.batch, r.prefill_tokens_per_s, r.ttft_ms,
        r.prefill_tflop_per_s, percent(r.prefill_tflop_per_s, roof.tflop_per_s),
        r.decode_tokens_per_s, r.weight_gib, r.decode_gb_per_s,
        percent(r.decode_gb_per_s, roof.bandwidth_gb_per_s), r.peak_memory_gib);
  }
  (void)o;
}

nlohmann::json rows_json(const BenchOptions& o, const std::vector<BenchRow>& rows,
                         const Roofline& roof) {
  nlohmann::json json = nlohmann::json::array();
  for (const BenchRow& r : rows) {
    json.push_back({{"weights", r.c.weights},
                    {"attn", r.c.attn},
                    {"device", o.model.device},
                    {"prompt", r.c.prompt},
                    {"batch", r.c.batch},
                    {"gen", o.gen},
                    {"graphs", !o.model.no_graphs},
                    {"prefill_tokens_per_s", r.prefill_tokens_per_s},
                    {"ttft_ms", r.ttft_ms},
                    {"prefill_tflop_per_s", r.prefill_tflop_per_s},
                    {"decode_tokens_per_s", r.decode_tokens_per_s},
                    {"weight_gib", r.weight_gib},
                    {"decode_gb_per_s", r.decode_gb_per_s},
                    {"peak_memory_gib", r.peak_memory_gib},
                    {"prefill_tokens_per_s_runs", r.prefill_runs},
                    {"decode_tokens_per_s_runs", r.decode_runs},
                    {"roofline_gb_per_s", roof.bandwidth_gb_per_s},
                    {"roofline_tflop_per_s", roof.tflop_per_s}});
  }
  return json;
}

void run(BenchOptions o) {
  if (o.train.enabled) {
    return run_train_bench(o.train, {o.model.model_dir, o.preset, o.model.device, o.model.threads,
                                     o.json_file, o.model.profile_path, o.attn});
  }
  if (o.model.model_dir.empty() == o.preset.empty())
    fail("give exactly one of --model and --preset");
  const std::vector<std::string> formats = split_list(o.weights);
  const std::vector<std::string> attns = split_list(o.attn);
  const std::vector<int64_t> prompts = split_numbers(o.prompts, "--prompt");
  const std::vector<int64_t> batches = split_numbers(o.batches, "--batch");
  if (formats.empty() || attns.empty()) fail("--weights and --attn need at least one value");
  const Roofline roof = measure_roofline(o.model.device, o.model.threads);
  BenchWeights loaded;
  load_bench_weights(o.preset, o.model.model_dir, o.model.threads, loaded);
  if (o.model.no_mmap) {
    const int64_t bytes = copy_weights_into_memory(loaded.weights);
    log_line(fmt::format("--no-mmap: {:.1f} MiB of weights read into memory",
                         double(bytes) / (1 << 20)));
  }
  const LlamaConfig& config = loaded.config;
  const LlamaWeights& weights = loaded.weights;
  std::vector<BenchRow> rows;
  std::string backend_name;
  std::unique_ptr<Backend> profiled;
  for (const std::string& format : formats) {
    const LlamaWeights formatted = weights_as(o, weights, format);
    for (const std::string& attn : attns) {
      ModelOptions model_options = o.model;
      model_options.attention = attn;
      std::unique_ptr<Backend> backend = make_profiled_backend(model_options);
      backend_name = std::string(backend->name());
      {
        LlamaModel model(config, formatted, *backend);
        model.set_graphs_enabled(!o.model.no_graphs);
        for (const int64_t prompt : prompts) {
          for (const int64_t batch : batches) {
            const BenchCase c{format, attn, prompt, batch};
            log_line(fmt::format("bench: {} weights, {} attention, prompt {}, batch {}", format,
                                 attn, prompt, batch));
            rows.push_back(run_case(o, c, config, formatted, *backend, model));
          }
        }
      }
      if (!o.model.profile_path.empty()) profiled = std::move(backend);  // the last one's trace
    }
  }
  const std::string title =
      fmt::format("{} on {} ({}), {} decoded tokens per sequence, CUDA graphs {}{}",
                  o.preset.empty() ? o.model.model_dir : o.preset, backend_name, o.model.device,
                  o.gen, o.model.no_graphs || !o.model.profile_path.empty() ? "off" : "on",
                  o.repeat > 1 ? fmt::format(", medians of {} runs", o.repeat) : "");
  print_rows(o, rows, roof, title);
  std::cout << fmt::format("peak host memory {:.1f} MiB", double(peak_resident_bytes()) / (1 << 20))
            << std::endl;
  if (profiled) finish_profile(*profiled, o.model.profile_path);
  if (!o.json_file.empty()) write_file_atomic(o.json_file, rows_json(o, rows, roof).dump(2) + "\n");
}

}  // namespace

void register_bench(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Prefill and decode speed, per weight format, attention, prompt and batch");
  cmd->add_option("-m,--model", o->model.model_dir, "Checkpoint folder");
  cmd->add_option(
      "--preset", o->preset,
      "Random weights of a real shape: llama3-8b, llama3.1-8b, llama3.2-1b, llama3.2-3b");
  cmd->add_option("--device", o->model.device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--weights", o->weights, "Comma-separated formats: bf16, nf4");
  cmd->add_flag("--quant-lm-head", o->model.quant_lm_head, "With nf4, quantize the LM head too");
  add_kv_dtype_option(*cmd, o->model.kv_dtype);
  add_no_mmap_option(*cmd, o->model.no_mmap);
  cmd->add_option("--attn", o->attn, "Comma-separated attention kernels: flash, naive (GPU)");
  cmd->add_option("--prompt", o->prompts, "Comma-separated prompt lengths in tokens");
  cmd->add_option("--batch", o->batches, "Comma-separated numbers of sequences decoded together");
  cmd->add_option("--gen", o->gen, "Decoded tokens per sequence")->check(CLI::PositiveNumber);
  cmd->add_option("--prefill-chunk", o->prefill_chunk,
                  "Prompt tokens per forward call (bounds the prefill's activation memory)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("-t,--threads", o->model.threads, "CPU threads (0 = all)");
  cmd->add_option("--repeat", o->repeat, "Measure each case this many times and report medians")
      ->check(CLI::Range(1, 1000));
  cmd->add_flag("--no-graphs", o->model.no_graphs,
                "Launch each op of a decode step (no CUDA graph)");
  cmd->add_option("--json", o->json_file, "Also write the results as JSON");
  add_profile_option(*cmd, o->model.profile_path);
  add_train_bench_options(*cmd, o->train);
  cmd->callback([o] { run(*o); });
}

}  // namespace llamaq::cli
