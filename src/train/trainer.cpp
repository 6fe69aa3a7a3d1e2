#include "train/trainer.h"

#include <atomic>
#include <cmath>
#include <numeric>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/resources.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/loader.h"
#include "tokenizer/tokenizer.h"
#include "train/dataset.h"
#include "train/lora_model.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"

namespace llamaq {
namespace {

namespace fs = std::filesystem;

std::atomic<bool> g_stop_requested{false};

// Everything a run holds, so the step loop reads plainly.
struct Run {
  const TrainOptions& o;
  const std::function<void(const std::string&)>& log;
  Backend& backend;
  std::unique_ptr<LoraTrainModel> model;
  std::unique_ptr<TrainBatcher> batcher;
  std::vector<MicroBatch> eval_batches;
  std::unique_ptr<AdamW> optimizer;
  std::vector<Tensor> grads;
  int64_t step = 0;  // optimizer steps done
};

std::vector<Tensor> param_tensors(LoraTrainModel& m, bool gradients) {
  std::vector<Tensor> out;
  for (LoraParam& p : m.params()) {
    out.push_back(gradients ? p.grad_a : p.a);
    out.push_back(gradients ? p.grad_b : p.b);
  }
  return out;
}

// Sum of CE over a micro-batch's rows (padding cut off), with or without gradients. Each row's
// LoRA dropout masks come from (dropout_key, row), so a resumed run draws the same ones.
double run_micro_batch(LoraTrainModel& model, const MicroBatch& mb, double normalizer, bool train,
                       uint64_t dropout_key = 0) {
  double loss = 0;
  for (int64_t r = 0; r < mb.rows; ++r) {
    model.set_dropout_key(dropout_key * 0x9e3779b97f4a7c15ull + uint64_t(r));
    const size_t begin = size_t(r * mb.columns), length = size_t(mb.row_lengths[size_t(r)]);
    const auto ids = std::span(mb.input_ids).subspan(begin, length);
    const auto labels = std::span(mb.labels).subspan(begin, length);
    loss += train ? model.accumulate_gradients(ids, labels, normalizer) : model.loss_sum(ids, labels);
  }
  return loss;
}

double evaluate(Run& run) {
  double loss = 0;
  int64_t tokens = 0;
  for (const MicroBatch& mb : run.eval_batches) {
    loss += run_micro_batch(*run.model, mb, 1.0, false);
    tokens += mb.loss_tokens;
  }
  return tokens ? loss / double(tokens) : 0;
}

// A checkpoint folder: the adapter (PEFT files), the AdamW moments and the trainer state.
void save_checkpoint(Run& run, const fs::path& dir) {
  save_peft_adapter(dir, run.model->lora_config(), run.model->lora_tensors());
  std::vector<SafetensorsTensorData> moments;
  auto& m = run.optimizer->moments();
  std::vector<Tensor> host(m.size());
  for (size_t i = 0; i < m.size(); ++i) {
    host[i] = Tensor::zeros(DType::F32, m[i].shape());
    run.backend.copy_to_host(m[i], host[i].data());
    moments.push_back({"moment." + std::to_string(i), DType::F32, host[i].shape(),
                       {static_cast<const uint8_t*>(host[i].data()), size_t(host[i].nbytes())}});
  }
  write_safetensors(dir / "optimizer.safetensors", std::move(moments));
  const nlohmann::json state = {{"step", run.step},
                                {"data_position", nlohmann::json::parse(run.batcher->position().to_json())}};
  write_file_atomic(dir / "trainer_state.json", state.dump(2) + "\n");
}

// The adapter itself is loaded in setup(); this restores the optimizer and the data position.
void load_checkpoint(Run& run, const fs::path& dir) {
  const SafetensorsFile file = SafetensorsFile::open(dir / "optimizer.safetensors");
  auto& m = run.optimizer->moments();
  for (size_t i = 0; i < m.size(); ++i) {
    const Tensor t = file.tensor("moment." + std::to_string(i));
    if (t.shape() != m[i].shape()) fail("{}: moment {} does not fit the adapter", file.path().string(), i);
    if (t.dtype() != DType::F32) fail("{}: moment {} is not f32", file.path().string(), i);
    run.backend.copy_from_host(m[i], t.data());
  }
  const fs::path state_path = dir / "trainer_state.json";
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(read_text_file(state_path));
    run.step = state.at("step").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid trainer state: {}", state_path.string(), e.what());
  }
  run.batcher->restore(DataPosition::from_json(state.at("data_position").dump(), state_path.string()));
  run.optimizer->set_steps(run.step);
}

void setup(Run& run) {
  const TrainOptions& o = run.o;
  const LlamaConfig config = load_llama_config(o.model_dir / "config.json");
  check_quantization_config(config, (o.model_dir / "config.json").string());
  const CheckpointTensors checkpoint = CheckpointTensors::open(o.model_dir);
  LlamaWeights weights = bind_llama_weights(config, checkpoint);
  LoadOptions load;
  load.quantize_nf4 = o.quantize_nf4;
  load.threads = o.threads;
  load.progress = true;
  if (o.quantize_nf4) quantize_weights(weights, load);
  run.model = std::make_unique<LoraTrainModel>(config, weights, run.backend);
  LoraConfig lora = o.lora;
  lora.base_model_name_or_path = o.model_dir.string();
  if (o.resume_dir.empty()) {
    run.model->init_lora(lora, o.batching.seed);
  } else {
    run.model->load_lora(load_peft_adapter(o.resume_dir));
  }

  const Tokenizer tokenizer = Tokenizer::from_model_dir(o.model_dir);
  const ExampleEncoder encoder(tokenizer);
  DatasetLoadOptions data_options;
  ThreadPool data_pool(o.threads);
  data_options.pool = &data_pool;
  data_options.show_progress = true;
  TrainEvalSplit split = split_train_eval(load_jsonl_examples(o.data_file, encoder, data_options),
                                          o.eval_split, o.batching.seed);
  BatchingOptions batching = o.batching;
  batching.pad_id = encoder.pad_id();
  run.eval_batches = make_eval_batches(split.eval, batching);
  run.batcher = std::make_unique<TrainBatcher>(std::move(split.train), batching);
  run.optimizer = std::make_unique<AdamW>(run.backend, param_tensors(*run.model, false));
  run.grads = param_tensors(*run.model, true);
  if (!o.resume_dir.empty()) load_checkpoint(run, o.resume_dir);
  run.log(fmt::format("training on {}: {} LoRA adapters (r {}, {:.2f} M parameters) on {} examples "
                      "({} held out), {} steps per epoch",
                      run.backend.name(), run.model->params().size(), lora.r,
                      double(std::accumulate(run.grads.begin(), run.grads.end(), int64_t(0),
                                             [](int64_t s, const Tensor& t) { return s + t.numel(); })) / 1e6,
                      run.batcher->examples(), run.eval_batches.empty() ? 0 : int64_t(std::accumulate(
                          run.eval_batches.begin(), run.eval_batches.end(), int64_t(0),
                          [](int64_t s, const MicroBatch& b) { return s + b.rows; })),
                      run.batcher->steps_per_epoch()));
}

}  // namespace

void request_training_stop() { g_stop_requested = true; }

TrainSummary run_training(const TrainOptions& o, const std::function<void(const std::string&)>& log) {
  // The fp32 reference path: training's forward must be the function its backward differentiates
  // (the fast CPU path quantizes activations to int8 for NF4 weights).
  const std::unique_ptr<Backend> cpu = make_cpu_backend(o.threads, cpu::Isa::Reference);
  return run_training(o, *cpu, log);
}

TrainSummary run_training(const TrainOptions& o, Backend& backend,
                          const std::function<void(const std::string&)>& log) {
  o.batching.validate();
  g_stop_requested = false;
  Run run{o, log, backend, {}, {}, {}, {}, {}, 0};
  setup(run);
  const int64_t total = o.max_steps > 0 ? o.max_steps : o.epochs * run.batcher->steps_per_epoch();
  if (total < 1) fail("training: nothing to do (0 steps)");
  const LrSchedule schedule(parse_lr_schedule_kind(o.schedule), resolve_warmup_steps(o.warmup, total), total);
  MetricsWriter metrics(o.out_dir, o.resume_dir.empty() ? std::nullopt : std::optional<int64_t>(run.step));
  ProgressBar bar("training", total - run.step, "steps");
  TrainSummary summary;
  const Stopwatch clock;
  while (run.step < total && !g_stop_requested) {
    const Stopwatch step_clock;
    const OptimizerStepBatch batch = run.batcher->next_step();
    run.model->zero_grad();
    double loss = 0;
    int64_t tokens = 0;
    for (size_t i = 0; i < batch.micro_batches.size(); ++i) {
      const MicroBatch& mb = batch.micro_batches[i];
      const uint64_t key = (o.batching.seed << 32) ^ (uint64_t(run.step) << 8) ^ uint64_t(i);
      loss += run_micro_batch(*run.model, mb, double(std::max<int64_t>(1, batch.loss_tokens)), true, key);
      tokens += mb.real_tokens();
    }
    loss /= double(std::max<int64_t>(1, batch.loss_tokens));
    StepMetrics m;
    m.grad_norm = clip_grad_norm(run.backend, run.grads, o.max_grad_norm);
    m.lr = schedule.learning_rate(o.adamw.lr, run.step);
    run.optimizer->step(run.grads, m.lr, o.adamw);
    ++run.step;
    m.step = run.step;
    m.loss = loss;
    m.tokens_per_s = double(tokens) / step_clock.seconds();
    if ((o.eval_every > 0 && run.step % o.eval_every == 0) || run.step == total) {
      if (!run.eval_batches.empty()) summary.eval_loss = m.eval_loss = evaluate(run);
    }
    metrics.write(m);
    if (summary.steps == 0) summary.first_loss = loss;
    summary.last_loss = loss;
    summary.tokens += tokens;
    ++summary.steps;
    bar.advance(1, fmt::format("loss {:.4f} lr {:.2e} {:.0f} tok/s", loss, m.lr, m.tokens_per_s));
    if (o.save_every > 0 && run.step % o.save_every == 0) {
      save_checkpoint(run, o.out_dir / fmt::format("checkpoint-{}", run.step));
    }
  }
  summary.interrupted = run.step < total;
  if (summary.interrupted) {
    save_checkpoint(run, o.out_dir / fmt::format("checkpoint-{}", run.step));
    log(fmt::format("interrupted: checkpoint-{} saved; continue with --resume {}", run.step,
                    (o.out_dir / fmt::format("checkpoint-{}", run.step)).string()));
  }
  save_peft_adapter(o.out_dir, run.model->lora_config(), run.model->lora_tensors());
  summary.seconds = clock.seconds();
  bar.finish(fmt::format("loss {:.4f} -> {:.4f}", summary.first_loss, summary.last_loss));
  return summary;
}

}  // namespace llamaq
