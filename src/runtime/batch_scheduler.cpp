#include "runtime/batch_scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"

namespace llamaq {
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Log-softmax of the row at `id` and, when asked, the `top` most likely ids.
void fill_logprobs(std::span<const float> logits, int top, TokenEvent& event) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float x : logits)
    sum += std::exp(double(x - max_logit));
  const double log_z = double(max_logit) + std::log(sum);
  event.logprob = float(double(logits[size_t(event.id)]) - log_z);
  if (top <= 0) return;
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = int32_t(i);
  const size_t k = std::min(ids.size(), size_t(top));
  std::partial_sort(ids.begin(), ids.begin() + ptrdiff_t(k), ids.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] ||
           (logits[size_t(a)] == logits[size_t(b)] && a < b);
  });
  for (size_t i = 0; i < k; ++i) {
    event.top.push_back({ids[i], float(double(logits[size_t(ids[i])]) - log_z)});
  }
}

}  // namespace

// A request in the running batch: its cache sequence, sampler and progress.
struct BatchScheduler::Active {
  BatchRequest request;
  int seq = -1;
  int64_t prompt_done = 0;       // prompt tokens already in the cache
  std::vector<int32_t> history;  // prompt + generated (for the repetition penalty)
  std::vector<int32_t> generated;
  std::vector<float> logits;  // [vocab] f32 after this step, adjusted; empty mid-prompt
  Sampler sampler;
  int32_t next_token = -1;  // sampled this step
  int64_t budget = 0;
  bool done = false;

  Active(BatchRequest r, int s, int64_t b)
      : request(std::move(r)),
        seq(s),
        history(request.prompt),
        sampler(request.sampling),
        budget(b) {}
  bool prefilling() const { return prompt_done < int64_t(request.prompt.size()); }
};

BatchScheduler::BatchScheduler(std::vector<LlamaModel*> models, KvCache& cache,
                               const SchedulerOptions& options)
    : models_(std::move(models)), cache_(cache), options_(options) {
  if (models_.empty()) fail("batch scheduler: no model");
  if (options_.max_batch <= 0 || options_.max_queue < 0 || options_.context_tokens <= 0 ||
      options_.prefill_tokens <= 0 || options_.kv_block_size <= 0) {
    fail("batch scheduler: max batch, context, prefill and block size must be > 0, queue >= 0");
  }
  if (budget(1, options_.context_tokens - 1) > cache_.free_tokens()) {
    fail("batch scheduler: the KV cache ({} tokens) cannot hold one {}-token context",
         cache_.free_tokens(), options_.context_tokens);
  }
  kv_total_ = cache_.free_tokens();
  kv_free_ = kv_total_;
  sampling_pool_ =
      std::make_unique<ThreadPool>(std::min(8, int(std::thread::hardware_concurrency())));
  thread_ = std::thread([this] { loop(); });
}

BatchScheduler::~BatchScheduler() {
  stop();
}

int64_t BatchScheduler::budget(int64_t prompt_tokens, int64_t max_new_tokens) const {
  // The last sampled token is never fed back, so it needs no cache slot.
  const int64_t tokens = prompt_tokens + std::max<int64_t>(0, max_new_tokens - 1);
  const int64_t block = options_.kv_block_size;
  return (tokens + block - 1) / block * block;
}

BatchScheduler::Admission BatchScheduler::submit(BatchRequest request) {
  if (request.model < 0 || size_t(request.model) >= models_.size()) {
    fail("request: no model {}", request.model);
  }
  if (request.prompt.empty()) fail("request: the prompt is empty");
  if (request.max_new_tokens < 1) fail("request: max new tokens must be >= 1");
  const int64_t total = int64_t(request.prompt.size()) + request.max_new_tokens;
  if (total > options_.context_tokens) {
    fail("request: {} prompt tokens + {} new tokens exceed the context of {} tokens",
         request.prompt.size(), request.max_new_tokens, options_.context_tokens);
  }
  const int32_t vocab = int32_t(models_[0]->config().vocab_size);
  for (int32_t id : request.prompt) {
    if (id < 0 || id >= vocab) fail("request: token id {} is outside the vocabulary", id);
  }
  validate(request.sampling);
  {
    std::lock_guard lock(mutex_);
    if (!accepting_) return Admission::Stopped;
    if (int(waiting_.size()) >= options_.max_queue &&
        active_count_.load() + int(waiting_.size()) >= options_.max_batch) {
      return Admission::QueueFull;
    }
    waiting_.push_back(std::move(request));
  }
  wake_.notify_one();
  return Admission::Queued;
}

SchedulerStats BatchScheduler::stats() const {
  std::lock_guard lock(mutex_);
  SchedulerStats s;
  s.active = active_count_.load();
  s.queued = int(waiting_.size());
  s.kv_total_tokens = kv_total_;
  s.kv_free_tokens = kv_free_.load();
  s.steps = steps_.load();
  s.generated_tokens = generated_.load();
  return s;
}

// Moves waiting requests into the batch while a slot and their KV budget are free (FIFO, so a
// long request is not starved by short ones). Returns false when the loop should exit.
bool BatchScheduler::admit_waiting() {
  std::unique_lock lock(mutex_);
  wake_.wait(lock, [&] { return stopping_ || draining_ || !waiting_.empty() || !active_.empty(); });
  if (draining_) {
    for (BatchRequest& r : waiting_) {
      if (r.on_done)
        r.on_done(
            {FinishReason::Error, int64_t(r.prompt.size()), 0, "the server is shutting down"});
    }
    waiting_.clear();
    if (now_seconds() >= drain_deadline_) {
      for (auto& a : active_)
        finish(*a, FinishReason::Error, "the server is shutting down");
      active_.clear();
    }
    if (active_.empty()) {
      active_count_ = 0;
      kv_free_ = cache_.free_tokens();
      idle_.notify_all();
      if (stopping_) return false;
      wake_.wait(lock, [&] { return stopping_ || !waiting_.empty(); });
      return !stopping_;
    }
  }
  while (!waiting_.empty() && int(active_.size()) < options_.max_batch) {
    const int64_t need =
        budget(int64_t(waiting_.front().prompt.size()), waiting_.front().max_new_tokens);
    if (reserved_tokens_ + need > cache_.capacity_tokens()) break;
    BatchRequest r = std::move(waiting_.front());
    waiting_.pop_front();
    reserved_tokens_ += need;
    active_.push_back(std::make_unique<Active>(std::move(r), cache_.add_sequence(), need));
  }
  active_count_ = int(active_.size());
  return true;
}

void BatchScheduler::loop() {
  while (admit_waiting()) {
    if (active_.empty()) continue;
    const int model = pick_model();
    try {
      step(model);
    } catch (const std::exception& e) {
      // A failed step (out of memory, a backend error) fails the requests it ran, not the server.
      for (auto& a : active_) {
        if (a->request.model == model) finish(*a, FinishReason::Error, e.what());
      }
    }
    std::lock_guard lock(mutex_);
    std::erase_if(active_, [](const std::unique_ptr<Active>& a) { return a->done; });
    active_count_ = int(active_.size());
    kv_free_ = cache_.free_tokens();
  }
}

// Round-robin over the models that have active requests (each step runs one model's batch).
int BatchScheduler::pick_model() const {
  const int n = int(models_.size());
  for (int i = 0; i < n; ++i) {
    const int m = (next_model_ + i) % n;
    for (const auto& a : active_) {
      if (a->request.model == m) return m;
    }
  }
  return 0;
}

void BatchScheduler::step(int model) {
  next_model_ = (model + 1) % int(models_.size());
  std::vector<Active*> batch;
  std::vector<SequenceInput> inputs;
  int64_t prefill_left = options_.prefill_tokens;
  for (auto& a : active_) {
    if (a->request.model != model || a->done) continue;
    if (a->request.cancel->load()) {
      finish(*a, FinishReason::Cancelled);
      continue;
    }
    std::span<const int32_t> ids;
    if (a->prefilling()) {
      if (prefill_left <= 0) continue;  // waits for the next step's prompt budget
      const int64_t n = std::min(prefill_left, int64_t(a->request.prompt.size()) - a->prompt_done);
      ids = std::span(a->request.prompt).subspan(size_t(a->prompt_done), size_t(n));
      prefill_left -= n;
    } else {
      ids = std::span(&a->next_token, 1);
    }
    batch.push_back(a.get());
    inputs.push_back({a->seq, ids});
  }
  if (batch.empty()) return;
  const Tensor logits = models_[size_t(model)]->forward_batch(cache_, inputs, LogitsFor::LastToken);
  const int64_t vocab = logits.shape()[1];
  // [batch, vocab] f32, reused from step to step (grown once, never cleared: the copy fills it).
  if (host_logits_.size() < size_t(logits.numel())) host_logits_.resize(size_t(logits.numel()));
  models_[size_t(model)]->backend().copy_to_host(logits, host_logits_.data());
  steps_.fetch_add(1);

  std::vector<std::pair<Active*, size_t>> sampling;  // with its row of the logits
  for (size_t i = 0; i < batch.size(); ++i) {
    Active& a = *batch[i];
    if (a.prefilling()) a.prompt_done += int64_t(inputs[i].ids.size());
    if (a.prefilling()) continue;  // mid-prompt: these logits are not used
    sampling.emplace_back(&a, i);
  }
  // Sampling is per sequence and independent: spread it, and the copy of each row, over the
  // cores (a 128k-vocabulary draw costs about a millisecond, which 32 sequences would otherwise
  // add to every step).
  sampling_pool_->parallel_for(int64_t(sampling.size()), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Active& a = *sampling[size_t(i)].first;
      const auto row = host_logits_.begin() + ptrdiff_t(sampling[size_t(i)].second) * vocab;
      a.logits.assign(row, row + vocab);
      const LogitAdjustments& adj = a.request.adjustments;
      if (!adj.empty()) {
        for (const auto& [id, bias] : adj.bias)
          a.logits[size_t(id)] += bias;
        std::map<int32_t, int> counts;
        for (int32_t t : a.generated)
          ++counts[t];
        for (const auto& [id, count] : counts) {
          a.logits[size_t(id)] -= adj.presence_penalty + adj.frequency_penalty * float(count);
        }
      }
      a.next_token = a.sampler.sample(a.logits, a.history);
    }
  });
  for (const auto& [a, row] : sampling)
    emit(*a, a->logits);
}

// Hands the sampled token to the caller and ends the request when it is finished.
void BatchScheduler::emit(Active& a, std::span<const float> logits) {
  const BatchRequest& r = a.request;
  const int32_t token = a.next_token;
  if (std::find(r.stop_ids.begin(), r.stop_ids.end(), token) != r.stop_ids.end()) {
    finish(a, FinishReason::Stop);
    return;
  }
  a.generated.push_back(token);
  a.history.push_back(token);
  generated_.fetch_add(1);
  TokenEvent event{token, 0, {}};
  if (r.logprobs) fill_logprobs(logits, r.top_logprobs, event);
  if (r.cancel->load() || (r.on_token && !r.on_token(event))) {
    finish(a, FinishReason::Cancelled);
    return;
  }
  if (int64_t(a.generated.size()) >= r.max_new_tokens) finish(a, FinishReason::Length);
}

void BatchScheduler::finish(Active& a, FinishReason reason, std::string error) {
  if (a.done) return;
  a.done = true;
  cache_.remove_sequence(a.seq);
  reserved_tokens_ -= a.budget;
  // Before on_done, so a caller woken by it sees the request gone and its blocks free.
  kv_free_ = cache_.free_tokens();
  active_count_.fetch_sub(1);
  BatchOutcome outcome{reason, int64_t(a.request.prompt.size()), int64_t(a.generated.size()),
                       std::move(error)};
  if (a.request.on_done) a.request.on_done(outcome);
}

void BatchScheduler::drain(double deadline_s) {
  std::unique_lock lock(mutex_);
  accepting_ = false;
  draining_ = true;
  drain_deadline_ = now_seconds() + std::max(0.0, deadline_s);
  wake_.notify_all();
  idle_.wait(lock, [&] { return active_count_.load() == 0 && waiting_.empty(); });
}

void BatchScheduler::stop() {
  if (!thread_.joinable()) return;
  drain(0);
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

}  // namespace llamaq
