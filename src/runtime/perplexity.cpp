#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/kv_cache.h"

namespace llamaq {
namespace {

// log-sum-exp of a row in double.
double log_sum_exp(const float* row, int64_t n) {
  const float max = *std::max_element(row, row + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(row[i]) - max);
  return double(max) + std::log(sum);
}

// KL(p || q) for two rows of logits, natural log.
double kl_divergence(const float* p_logits, const float* q_logits, int64_t n) {
  const double p_lse = log_sum_exp(p_logits, n);
  const double q_lse = log_sum_exp(q_logits, n);
  double kl = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double log_p = double(p_logits[i]) - p_lse;
    kl += std::exp(log_p) * (log_p - (double(q_logits[i]) - q_lse));
  }
  return std::max(0.0, kl);
}

// Logits for positions [from, to) of the window tokens[begin, end): runs the window through the
// model in chunks and keeps only the rows asked for. Returns [to - from, vocab].
std::vector<float> window_logits(LlamaModel& model, KvCache& cache, int seq,
                                 std::span<const int32_t> window, int64_t from, int64_t to,
                                 int64_t batch) {
  const int64_t vocab = model.config().vocab_size;
  std::vector<float> out(size_t((to - from) * vocab));
  cache.truncate(seq, 0);
  for (int64_t a = 0; a < to; a += batch) {
    const int64_t b = std::min<int64_t>(a + batch, to);
    const auto chunk = window.subspan(size_t(a), size_t(b - a));
    if (b <= from) {
      model.forward(cache, seq, chunk, LogitsFor::LastToken);  // context only
      continue;
    }
    const std::vector<float> logits = model.forward_to_host(cache, seq, chunk, LogitsFor::AllTokens);
    for (int64_t t = std::max(a, from); t < b; ++t) {
      std::copy_n(logits.begin() + (t - a) * vocab, vocab, out.begin() + (t - from) * vocab);
    }
  }
  return out;
}

}  // namespace

double PerplexityResult::perplexity() const {
  return scored ? std::exp(nll_sum / double(scored)) : 0;
}

PerplexityResult evaluate_perplexity(LlamaModel& model, std::span<const int32_t> tokens,
                                     const PerplexityOptions& options, LlamaModel* base,
                                     const std::function<void(int64_t, int64_t)>& on_window) {
  const int64_t n = int64_t(tokens.size());
  const int64_t ctx = options.ctx;
  const int64_t stride = options.stride > 0 ? options.stride : ctx;
  if (n < 2) fail("perplexity: the text has {} tokens; at least 2 are needed", n);
  if (ctx < 2) fail("perplexity: the context must hold at least 2 tokens (got {})", ctx);
  if (stride > ctx) fail("perplexity: stride {} is larger than the context {}", stride, ctx);
  if (options.batch <= 0) fail("perplexity: batch must be > 0");
  if (base && base->config().vocab_size != model.config().vocab_size) {
    fail("perplexity: the base model's vocabulary ({}) differs from the model's ({})",
         base->config().vocab_size, model.config().vocab_size);
  }
  const int64_t vocab = model.config().vocab_size;
  KvCache cache(model.backend(), model.config(), ctx);
  const int seq = cache.add_sequence();
  std::optional<KvCache> base_cache;
  if (base) base_cache.emplace(base->backend(), base->config(), ctx);
  const int base_seq = base ? base_cache->add_sequence() : -1;

  const int64_t total_windows = std::max<int64_t>(1, (std::max<int64_t>(0, n - ctx) + stride - 1) / stride + 1);
  PerplexityResult result;
  int64_t scored_until = 1;  // tokens before this index are scored (token 0 never is)
  for (int64_t begin = 0; scored_until < n; begin += stride) {
    const int64_t end = std::min(begin + ctx, n);
    const auto window = tokens.subspan(size_t(begin), size_t(end - begin));
    // Predict tokens [scored_until, end) from the logits at the positions before them.
    const int64_t from = scored_until - 1 - begin;
    const int64_t to = end - 1 - begin;
    const auto logits = window_logits(model, cache, seq, window, from, to, options.batch);
    std::vector<float> base_logits;
    if (base) base_logits = window_logits(*base, *base_cache, base_seq, window, from, to, options.batch);
    for (int64_t r = 0; r < to - from; ++r) {
      const float* row = logits.data() + r * vocab;
      const int32_t target = window[size_t(from + r + 1)];
      result.nll_sum += log_sum_exp(row, vocab) - double(row[target]);
      if (base) {
        const float* base_row = base_logits.data() + r * vocab;
        result.kl_sum += kl_divergence(base_row, row, vocab);
        result.top1_agree += std::max_element(row, row + vocab) - row ==
                             std::max_element(base_row, base_row + vocab) - base_row;
      }
    }
    result.scored += to - from;
    scored_until = end;
    ++result.windows;
    if (on_window) on_window(result.windows, total_windows);
  }
  return result;
}

}  // namespace llamaq
