// The continuous-batching scheduler on the tiny real-vocabulary model (CPU): each request's
// tokens equal generate() run alone with the same settings, whatever else shares the batch;
// cancellation frees the request's KV blocks; admission limits and shutdown.
#include <gtest/gtest.h>

#include <cmath>
#include <future>

#include "model/loader.h"
#include "runtime/batch_scheduler.h"
#include "runtime/generate.h"
#include "test_util.h"

namespace llamaq {
namespace {

struct Fixture {
  std::unique_ptr<Backend> backend = make_cpu_backend(2);
  LoadedModel loaded = load_model(test::model_dir("tiny-llama3-vocab"), *backend);
  LlamaModel& model() { return *loaded.model; }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

// The tokens generate() produces for one request alone.
std::vector<int32_t> reference(const BatchRequest& r) {
  KvCache cache(*fixture().backend, fixture().model().config(), 1024);
  const int seq = cache.add_sequence();
  GenerateOptions options;
  options.max_new_tokens = r.max_new_tokens;
  options.stop_ids = r.stop_ids;
  options.sampling = r.sampling;
  return generate(fixture().model(), cache, seq, r.prompt, options, {}).tokens;
}

struct Collected {
  std::vector<int32_t> tokens;
  std::vector<TokenEvent> events;
  BatchOutcome outcome;
  std::promise<void> done;
};

// Wires the request's callbacks to `c`; `limit` > 0 cancels after that many tokens.
BatchRequest wire(BatchRequest r, Collected& c, size_t limit = 0) {
  r.on_token = [&c, limit](const TokenEvent& e) {
    c.tokens.push_back(e.id);
    c.events.push_back(e);
    return limit == 0 || c.tokens.size() < limit;
  };
  r.on_done = [&c](const BatchOutcome& o) {
    c.outcome = o;
    c.done.set_value();
  };
  return r;
}

BatchRequest request(std::vector<int32_t> prompt, int64_t max_new, float temperature,
                     uint64_t seed) {
  BatchRequest r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new;
  r.sampling.temperature = temperature;
  r.sampling.top_p = temperature > 0 ? 0.9f : 1.0f;
  r.sampling.seed = seed;
  return r;
}

SchedulerOptions options(int max_batch, int max_queue, int64_t prefill = 512) {
  SchedulerOptions o;
  o.max_batch = max_batch;
  o.max_queue = max_queue;
  o.context_tokens = 256;
  o.prefill_tokens = prefill;
  return o;
}

TEST(BatchScheduler, EachRequestMatchesGenerateAlone) {
  // Prefill of 7 tokens per step: long prompts take several steps while others decode.
  std::vector<BatchRequest> requests = {
      request({128000, 9906, 1917}, 12, 0.0f, 1),
      request({128000, 791, 6864, 315, 9822, 374, 12366, 13, 578, 6864, 315, 9635, 374}, 9, 0.8f,
              7),
      request({128000, 40, 1093}, 20, 1.0f, 42),
      request({128000, 9906}, 5, 0.0f, 3),
      request({128000, 3923, 374, 279, 1888, 1646, 30}, 15, 0.7f, 11),
  };
  // References first: the backend serves one thread at a time.
  std::vector<std::vector<int32_t>> expected;
  for (const BatchRequest& r : requests)
    expected.push_back(reference(r));
  KvCache cache(*fixture().backend, fixture().model().config(), 256 * 4);
  BatchScheduler scheduler({&fixture().model()}, cache, options(3, 16, 7));
  std::vector<Collected> got(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(scheduler.submit(wire(requests[i], got[i])), BatchScheduler::Admission::Queued);
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    got[i].done.get_future().wait();
    EXPECT_EQ(got[i].tokens, expected[i]) << "request " << i;
    EXPECT_EQ(got[i].outcome.reason, FinishReason::Length);
    EXPECT_EQ(got[i].outcome.completion_tokens, requests[i].max_new_tokens);
    EXPECT_EQ(got[i].outcome.prompt_tokens, int64_t(requests[i].prompt.size()));
  }
  const SchedulerStats s = scheduler.stats();
  EXPECT_EQ(s.active, 0);
  EXPECT_EQ(s.kv_free_tokens, s.kv_total_tokens);
  EXPECT_GT(s.steps, 0);
  // Fewer steps than the requests' tokens one after another: they shared steps.
  EXPECT_LT(s.steps, 12 + 9 + 20 + 5 + 15);
}

TEST(BatchScheduler, StopIdEndsTheRequestWithoutStreamingIt) {
  KvCache cache(*fixture().backend, fixture().model().config(), 512);
  BatchScheduler scheduler({&fixture().model()}, cache, options(2, 4));
  BatchRequest r = request({128000, 9906, 1917}, 8, 0.0f, 1);
  const std::vector<int32_t> free_run = reference(r);
  r.stop_ids = {free_run[3]};
  Collected c;
  scheduler.submit(wire(r, c));
  c.done.get_future().wait();
  const auto first = std::find(free_run.begin(), free_run.end(), free_run[3]);
  EXPECT_EQ(c.tokens, std::vector<int32_t>(free_run.begin(), first));
  EXPECT_EQ(c.outcome.reason, FinishReason::Stop);
}

TEST(BatchScheduler, CancelFreesTheKvBlocks) {
  KvCache cache(*fixture().backend, fixture().model().config(), 512);
  BatchScheduler scheduler({&fixture().model()}, cache, options(2, 4));
  Collected by_callback, by_flag;
  scheduler.submit(wire(request({128000, 9906}, 200, 0.0f, 1), by_callback, 3));
  BatchRequest flagged = wire(request({128000, 40}, 200, 0.0f, 1), by_flag);
  const auto cancel = flagged.cancel;
  flagged.on_token = [&by_flag, cancel](const TokenEvent& e) {
    by_flag.tokens.push_back(e.id);
    if (by_flag.tokens.size() == 5) cancel->store(true);  // as an HTTP thread would
    return true;
  };
  scheduler.submit(std::move(flagged));
  by_callback.done.get_future().wait();
  by_flag.done.get_future().wait();
  EXPECT_EQ(by_callback.outcome.reason, FinishReason::Cancelled);
  EXPECT_EQ(by_callback.tokens.size(), 3u);
  EXPECT_EQ(by_flag.outcome.reason, FinishReason::Cancelled);
  EXPECT_EQ(by_flag.tokens.size(), 5u);
  const SchedulerStats s = scheduler.stats();
  EXPECT_EQ(s.kv_free_tokens, s.kv_total_tokens);
}

TEST(BatchScheduler, LogprobsAreTheLogSoftmaxOfTheLogits) {
  KvCache cache(*fixture().backend, fixture().model().config(), 512);
  BatchScheduler scheduler({&fixture().model()}, cache, options(2, 4));
  BatchRequest r = request({128000, 9906, 1917}, 1, 0.0f, 1);
  r.logprobs = true;
  r.top_logprobs = 4;
  Collected c;
  scheduler.submit(wire(r, c));
  c.done.get_future().wait();
  KvCache ref_cache(*fixture().backend, fixture().model().config(), 64);
  const std::vector<float> logits = fixture().model().forward_to_host(
      ref_cache, ref_cache.add_sequence(), r.prompt, LogitsFor::LastToken);
  double z = 0;
  const float top = *std::max_element(logits.begin(), logits.end());
  for (float x : logits)
    z += std::exp(double(x - top));
  ASSERT_EQ(c.events.size(), 1u);
  const TokenEvent& e = c.events[0];
  EXPECT_EQ(e.id, argmax(logits));
  // float32 logits, log-sum-exp in double: agreement to float rounding of values near -12.
  EXPECT_NEAR(e.logprob, double(logits[size_t(e.id)] - top) - std::log(z), 1e-4);
  ASSERT_EQ(e.top.size(), 4u);
  EXPECT_EQ(e.top[0].id, e.id);
  for (size_t i = 1; i < e.top.size(); ++i)
    EXPECT_LE(e.top[i].logprob, e.top[i - 1].logprob);
}

TEST(BatchScheduler, RefusesWhatCannotRun) {
  KvCache cache(*fixture().backend, fixture().model().config(), 512);
  BatchScheduler scheduler({&fixture().model()}, cache, options(1, 1));
  test::expect_error([&] { scheduler.submit(request({128000}, 256, 0.0f, 1)); },
                     {"1 prompt tokens + 256 new tokens", "context of 256"});
  test::expect_error([&] { scheduler.submit(request({}, 4, 0.0f, 1)); }, {"empty"});
  test::expect_error([&] { scheduler.submit(request({999999}, 4, 0.0f, 1)); }, {"999999"});
  test::expect_error([&] { scheduler.submit(request({1}, 0, 0.0f, 1)); }, {"max new tokens"});
}

TEST(BatchScheduler, FullQueueAndShutdown) {
  KvCache cache(*fixture().backend, fixture().model().config(), 512);
  BatchScheduler scheduler({&fixture().model()}, cache, options(1, 1));
  // A holds the only slot (its first token waits for the test); B waits; C finds the queue full.
  std::promise<void> a_running, release_a;
  std::shared_future<void> released = release_a.get_future().share();
  bool signalled = false;
  Collected a, b;
  BatchRequest ra = wire(request({128000, 9906}, 250, 0.0f, 1), a);
  ra.on_token = [&, released](const TokenEvent&) {
    if (!signalled) {
      signalled = true;
      a_running.set_value();
      released.wait();
    }
    return true;
  };
  scheduler.submit(std::move(ra));
  a_running.get_future().wait();
  EXPECT_EQ(scheduler.submit(wire(request({128000, 40}, 4, 0.0f, 1), b)),
            BatchScheduler::Admission::Queued);
  Collected c;
  EXPECT_EQ(scheduler.submit(wire(request({128000, 40}, 4, 0.0f, 1), c)),
            BatchScheduler::Admission::QueueFull);
  // Shutdown with no grace: the running and the queued request both end with an error.
  release_a.set_value();
  scheduler.drain(0);
  a.done.get_future().wait();
  b.done.get_future().wait();
  EXPECT_EQ(a.outcome.reason, FinishReason::Error);
  EXPECT_EQ(b.outcome.reason, FinishReason::Error);
  EXPECT_NE(b.outcome.error.find("shutting down"), std::string::npos);
  EXPECT_EQ(scheduler.submit(wire(request({128000, 40}, 4, 0.0f, 1), c)),
            BatchScheduler::Admission::Stopped);
}

}  // namespace
}  // namespace llamaq
