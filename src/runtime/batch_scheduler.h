// Continuous batching: many generation requests share one paged KV cache and one model thread.
// Each step runs one forward_batch over every active sequence of one model (prompt chunks for
// newly admitted requests, one token for the others); requests join and leave the batch at token
// granularity, each with its own sampling settings. Callers on other threads submit() requests
// and receive tokens through callbacks that run on the scheduler thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "core/thread_pool.h"
#include "model/kv_cache.h"
#include "model/llama_model.h"
#include "runtime/sampler.h"

namespace llamaq {

// Adjustments OpenAI-style APIs make to the logits before the sampler chain.
struct LogitAdjustments {
  std::map<int32_t, float> bias;   // added to the token's logit
  float presence_penalty = 0.0f;   // subtracted once from every token generated so far
  float frequency_penalty = 0.0f;  // subtracted per occurrence among generated tokens
  bool empty() const { return bias.empty() && presence_penalty == 0 && frequency_penalty == 0; }
};

struct TokenLogprob {
  int32_t id;
  float logprob;  // log-softmax of the raw logits
};

// One sampled token as the callback sees it.
struct TokenEvent {
  int32_t id;
  float logprob = 0;              // of `id`, when logprobs were asked for
  std::vector<TokenLogprob> top;  // the most likely alternatives, most likely first
};

enum class FinishReason { Stop, Length, Cancelled, Error };

struct BatchOutcome {
  FinishReason reason = FinishReason::Length;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;  // tokens handed to on_token (the stop token is not)
  std::string error;              // for FinishReason::Error
};

struct BatchRequest {
  int model = 0;  // index into the scheduler's models
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 16;
  std::vector<int32_t> stop_ids;  // sampling one of these ends the request (not streamed)
  SamplingParams sampling;
  LogitAdjustments adjustments;
  bool logprobs = false;
  int top_logprobs = 0;
  // Runs on the scheduler thread for every generated token; false ends the request (Cancelled
  // unless the caller decided it was a stop). Must not block for long.
  std::function<bool(const TokenEvent&)> on_token;
  // Runs once on the scheduler thread when the request leaves (finished, cancelled or failed).
  std::function<void(const BatchOutcome&)> on_done;
  // Set from any thread to cancel; the request leaves the batch at the next step.
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
};

struct SchedulerOptions {
  int max_batch = 8;              // sequences in one step
  int max_queue = 64;             // requests waiting for a slot; submit() refuses beyond
  int64_t context_tokens = 4096;  // longest prompt + completion of one request
  int64_t prefill_tokens = 512;   // prompt tokens processed per step (across requests)
  int64_t kv_block_size = 16;     // the cache's block size (admission counts whole blocks)
};

struct SchedulerStats {
  int active = 0;
  int queued = 0;
  int64_t kv_free_tokens = 0;
  int64_t kv_total_tokens = 0;
  int64_t steps = 0;
  int64_t generated_tokens = 0;
};

class BatchScheduler {
 public:
  // `models` share one config and backend (a base model and adapters); `cache` is sized by the
  // caller and must hold at least one request's context. Starts the scheduler thread.
  BatchScheduler(std::vector<LlamaModel*> models, KvCache& cache, const SchedulerOptions& options);
  ~BatchScheduler();  // stop(), then join
  BatchScheduler(const BatchScheduler&) = delete;
  BatchScheduler& operator=(const BatchScheduler&) = delete;

  enum class Admission { Queued, QueueFull, Stopped };
  // Validates the request (throws llamaq::Error naming the problem) and queues it.
  Admission submit(BatchRequest request);

  // Stops taking requests; queued ones end with FinishReason::Error. Active ones run on until
  // they finish or `deadline_s` passes, then end with Error. Returns when the thread is idle.
  void drain(double deadline_s);
  // drain(0) and joins the thread.
  void stop();

  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return options_; }

 private:
  struct Active;
  void loop();
  bool admit_waiting();
  void step(int model);
  void finish(Active& a, FinishReason reason, std::string error = {});
  void emit(Active& a, std::span<const float> logits);
  int pick_model() const;
  int64_t budget(int64_t prompt_tokens,
                 int64_t max_new_tokens) const;  // KV positions, whole blocks

  std::vector<LlamaModel*> models_;
  KvCache& cache_;
  SchedulerOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable idle_;
  std::deque<BatchRequest> waiting_;
  std::vector<std::unique_ptr<Active>> active_;  // touched by the scheduler thread only
  std::atomic<int> active_count_{0};
  std::atomic<int64_t> reserved_tokens_{0};  // KV positions promised to active requests
  int next_model_ = 0;
  bool accepting_ = true;
  bool stopping_ = false;
  bool draining_ = false;
  double drain_deadline_ = 0;
  int64_t kv_total_ = 0;
  std::atomic<int64_t> kv_free_{0};  // the cache's free tokens after the last step
  std::atomic<int64_t> steps_{0};
  std::atomic<int64_t> generated_{0};
  std::unique_ptr<ThreadPool> sampling_pool_;
  std::vector<float> host_logits_;  // [batch, vocab] f32: the last step's logits (model thread)
  std::thread thread_;
};

}  // namespace llamaq
