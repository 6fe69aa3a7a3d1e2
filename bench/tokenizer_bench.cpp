// Tokenizer throughput (Google Benchmark, one thread): encoding English prose, the number the
// docs quote (target >= 10 MB/s on one core of a small CI VM), plus decoding and loading.
//
// The prose is generated, not downloaded: seeded Zipf-distributed sentences over a list of common
// English words with capitalisation, punctuation, numbers, quotes and paragraph breaks. Its
// pieces hit the vocabulary about as often as real prose does; it is not repetitive enough for a
// cache to help artificially (encoding keeps no cache across calls anyway).
//
// Tokenizer directory: $LLAMAQ_TOKENIZER_DIR, default tests/data/tokenizers/llama3_1.
#include <benchmark/benchmark.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "tokenizer/streaming_decoder.h"
#include "tokenizer/tokenizer.h"

namespace {

// clang-format off
constexpr const char* kWords[] = {
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
    "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "she", "other", "its",
    "may", "these", "what", "them", "than", "some", "him", "time", "into", "only", "do", "could",
    "new", "about", "two", "first", "then", "people", "also", "any", "like", "made", "over",
    "such", "our", "years", "between", "after", "world", "state", "most", "many", "work", "life",
    "government", "because", "through", "under", "system", "however", "during", "without",
    "development", "public", "house", "information", "important", "political", "economic",
    "history", "language", "children", "question", "experience", "understanding", "river",
    "mountain", "village", "teacher", "morning", "evening", "garden", "window", "journey",
    "library", "science", "research", "community", "relationship", "particularly", "especially",
    "nevertheless", "considerable", "independent", "approximately", "environment", "technology",
    "remarkable", "photograph", "neighbourhood", "quietly", "suddenly", "carefully", "beautiful",
    "ancient", "modern", "difficult", "simple", "bright", "dark", "cold", "warm", "green",
    "walked", "looked", "thought", "remembered", "decided", "explained", "discovered", "wrote",
    "believed", "returned", "Europe", "London", "January", "Sunday", "Mary", "John", "English"};
// clang-format on

std::string generate_prose(size_t target_bytes, uint32_t seed) {
  std::mt19937 rng(seed);
  const size_t n = std::size(kWords);
  std::vector<double> weights(n);
  for (size_t i = 0; i < n; ++i)
    weights[i] = 1.0 / std::pow(double(i + 1), 0.9);
  std::discrete_distribution<size_t> word(weights.begin(), weights.end());
  std::uniform_int_distribution<int> percent(0, 99);
  std::string text;
  while (text.size() < target_bytes) {
    const int sentences = 3 + percent(rng) % 6;
    for (int s = 0; s < sentences; ++s) {
      const int length = 6 + percent(rng) % 20;
      for (int w = 0; w < length; ++w) {
        std::string token = kWords[word(rng)];
        if (w == 0) token[0] = char(std::toupper(static_cast<unsigned char>(token[0])));
        if (percent(rng) < 2) token = std::to_string(percent(rng) * 37 + 1900);
        if (percent(rng) < 2) token = "\"" + token + "\"";
        text += token;
        if (w + 1 < length) text += percent(rng) < 8 ? ", " : percent(rng) < 2 ? "; " : " ";
      }
      text += percent(rng) < 85 ? ". " : percent(rng) < 50 ? "? " : "! ";
    }
    text.back() = '\n';
    text += '\n';
  }
  return text;
}

std::string tokenizer_dir() {
  if (const char* dir = std::getenv("LLAMAQ_TOKENIZER_DIR")) return dir;
  return std::string(LLAMAQ_TEST_DATA_DIR) + "/tokenizers/llama3_1";
}

const llamaq::Tokenizer& tokenizer() {
  static const llamaq::Tokenizer instance = llamaq::Tokenizer::from_model_dir(tokenizer_dir());
  return instance;
}

const std::string& prose() {
  static const std::string text = generate_prose(4 << 20, 2024);
  return text;
}

void report_megabytes(benchmark::State& state, size_t bytes_per_iteration) {
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes_per_iteration));
  state.counters["MB/s"] = benchmark::Counter(double(bytes_per_iteration) / 1e6,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

void BM_EncodeEnglishProse(benchmark::State& state) {
  const std::string& text = prose();
  size_t tokens = 0;
  for (auto _ : state) {
    const std::vector<int32_t> ids = tokenizer().encode(text, /*parse_special=*/false);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  report_megabytes(state, text.size());
  state.counters["bytes/token"] = double(text.size()) / double(tokens);
}
BENCHMARK(BM_EncodeEnglishProse)->Unit(benchmark::kMillisecond)->MinTime(3.0);

void BM_EncodeProseParseSpecial(benchmark::State& state) {
  const std::string& text = prose();
  for (auto _ : state)
    benchmark::DoNotOptimize(tokenizer().encode(text, true).data());
  report_megabytes(state, text.size());
}
BENCHMARK(BM_EncodeProseParseSpecial)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_EncodeShortPrompt(benchmark::State& state) {  // per-call overhead
  const std::string text = prose().substr(0, 200);
  for (auto _ : state)
    benchmark::DoNotOptimize(tokenizer().encode(text, false).data());
  report_megabytes(state, text.size());
}
BENCHMARK(BM_EncodeShortPrompt);

void BM_DecodeProse(benchmark::State& state) {
  const std::vector<int32_t> ids = tokenizer().encode(prose(), false);
  for (auto _ : state)
    benchmark::DoNotOptimize(tokenizer().decode(ids, false).data());
  report_megabytes(state, prose().size());
}
BENCHMARK(BM_DecodeProse)->Unit(benchmark::kMillisecond);

void BM_StreamingDecodeProse(benchmark::State& state) {
  const std::vector<int32_t> ids = tokenizer().encode(prose(), false);
  for (auto _ : state) {
    llamaq::StreamingDecoder decoder(tokenizer(), false);
    size_t bytes = 0;
    for (const int32_t id : ids)
      bytes += decoder.push(id).size();
    benchmark::DoNotOptimize(bytes);
  }
  report_megabytes(state, prose().size());
}
BENCHMARK(BM_StreamingDecodeProse)->Unit(benchmark::kMillisecond);

void BM_LoadTokenizer(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(llamaq::Tokenizer::from_model_dir(tokenizer_dir()));
}
BENCHMARK(BM_LoadTokenizer)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
