// Train/eval split, shuffling, row layout (truncation or packing), micro-batches and the data
// position (batching.h).
#include "train/batching.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.h"

namespace llamaq {
namespace {

// Independent random streams derived from the one user seed.
constexpr uint64_t kEvalSplitStream = 0x6576616c2d73706cULL;  // "eval-spl"
constexpr uint64_t kEpochStream = 0x65706f6368736866ULL;      // "epochshf"

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

uint64_t derive_seed(uint64_t seed, uint64_t stream, uint64_t index) {
  return splitmix64(splitmix64(seed ^ stream) + index);
}

// ---- Examples as rows -----------------------------------------------------------------------

void check_example(const Example& example) {
  if (example.input_ids.size() != example.labels.size()) {
    fail("example from line {}: {} input ids but {} labels", example.line, example.input_ids.size(),
         example.labels.size());
  }
}

// Without packing, truncates each example to seq_len; drops examples with no loss token.
std::vector<Example> prepare_examples(std::vector<Example> examples, const BatchingOptions& options,
                                      int64_t& dropped) {
  std::vector<Example> kept;
  kept.reserve(examples.size());
  for (Example& example : examples) {
    check_example(example);
    if (!options.packing && int64_t(example.input_ids.size()) > options.seq_len) {
      example.input_ids.resize(size_t(options.seq_len));
      example.labels.resize(size_t(options.seq_len));
    }
    if (count_loss_tokens(example.labels) == 0) {
      ++dropped;
      continue;
    }
    kept.push_back(std::move(example));
  }
  return kept;
}

// Packing: offset of each example of `order` in the concatenated stream, plus the total.
std::vector<int64_t> stream_offsets(const std::vector<Example>& examples,
                                    std::span<const int64_t> order) {
  std::vector<int64_t> starts(order.size() + 1, 0);
  for (size_t i = 0; i < order.size(); ++i) {
    starts[i + 1] = starts[i] + int64_t(examples[size_t(order[i])].input_ids.size());
  }
  return starts;
}

// The rows of one pass over `examples` in `order` (non-owning view).
class RowLayout {
 public:
  RowLayout(const std::vector<Example>& examples, std::span<const int64_t> order,
            std::span<const int64_t> stream_starts, const BatchingOptions& options)
      : examples_(examples), order_(order), starts_(stream_starts), options_(options) {}

  int64_t rows() const {
    if (!options_.packing) return int64_t(order_.size());
    return (starts_.back() + options_.seq_len - 1) / options_.seq_len;
  }

  int64_t row_length(int64_t row) const {
    if (!options_.packing) return int64_t(example(row).input_ids.size());
    return std::min(options_.seq_len, starts_.back() - row * options_.seq_len);
  }

  // Writes the row's tokens at the start of ids/labels and the columns where examples start.
  void write_row(int64_t row, std::span<int32_t> ids, std::span<int32_t> labels,
                 std::vector<int64_t>& segment_starts) const {
    if (!options_.packing) {
      const Example& source = example(row);
      std::copy(source.input_ids.begin(), source.input_ids.end(), ids.begin());
      std::copy(source.labels.begin(), source.labels.end(), labels.begin());
      segment_starts = {0};
      return;
    }
    write_packed_row(row, ids, labels, segment_starts);
  }

 private:
  const Example& example(int64_t position) const {
    return examples_[size_t(order_[size_t(position)])];
  }

  void write_packed_row(int64_t row, std::span<int32_t> ids, std::span<int32_t> labels,
                        std::vector<int64_t>& segment_starts) const {
    const int64_t begin = row * options_.seq_len;
    const int64_t end = begin + row_length(row);
    // The example the row starts in: the last one whose stream offset is <= begin.
    int64_t index = std::upper_bound(starts_.begin(), starts_.end(), begin) - starts_.begin() - 1;
    segment_starts.clear();
    for (int64_t pos = begin; pos < end; ++index) {
      const Example& source = example(index);
      const int64_t offset = pos - starts_[size_t(index)];
      const int64_t take = std::min(int64_t(source.input_ids.size()) - offset, end - pos);
      const int64_t column = pos - begin;
      std::copy_n(source.input_ids.begin() + offset, take, ids.begin() + column);
      std::copy_n(source.labels.begin() + offset, take, labels.begin() + column);
      segment_starts.push_back(column);
      // A document's first token is never predicted from the previous document.
      if (offset == 0) labels[size_t(column)] = kIgnoreIndex;
      pos += take;
    }
  }

  const std::vector<Example>& examples_;
  std::span<const int64_t> order_;
  std::span<const int64_t> starts_;
  const BatchingOptions& options_;
};

MicroBatch build_micro_batch(const RowLayout& layout, const BatchingOptions& options,
                             int64_t first_row, int64_t rows) {
  MicroBatch batch;
  batch.rows = rows;
  for (int64_t r = 0; r < rows; ++r)
    batch.row_lengths.push_back(layout.row_length(first_row + r));
  const bool full_width = options.packing || options.pad_to_seq_len;
  batch.columns = full_width
                      ? options.seq_len
                      : *std::max_element(batch.row_lengths.begin(), batch.row_lengths.end());
  batch.input_ids.assign(size_t(rows * batch.columns), options.pad_id);
  batch.labels.assign(size_t(rows * batch.columns), kIgnoreIndex);
  batch.segment_starts.resize(size_t(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const size_t offset = size_t(r * batch.columns);
    const std::span<int32_t> labels(batch.labels.data() + offset, size_t(batch.columns));
    layout.write_row(first_row + r, std::span(batch.input_ids.data() + offset, labels.size()),
                     labels, batch.segment_starts[size_t(r)]);
    batch.loss_tokens += count_loss_tokens(labels.first(size_t(batch.row_lengths[size_t(r)])));
  }
  return batch;
}

// ---- Fingerprint ----------------------------------------------------------------------------

class Fnv1a64 {
 public:
  void add(uint64_t value) {
    for (int byte = 0; byte < 8; ++byte) {
      hash_ = (hash_ ^ ((value >> (8 * byte)) & 0xFF)) * 0x100000001B3ULL;
    }
  }
  uint64_t value() const { return hash_; }

 private:
  uint64_t hash_ = 0xCBF29CE484222325ULL;
};

uint64_t data_fingerprint(const std::vector<Example>& examples, const BatchingOptions& options) {
  Fnv1a64 hash;
  for (const int64_t value :
       {options.seq_len, int64_t(options.packing), options.micro_batch, options.grad_accum,
        int64_t(options.pad_id), int64_t(options.pad_to_seq_len), int64_t(examples.size())}) {
    hash.add(uint64_t(value));
  }
  hash.add(options.seed);
  for (const Example& example : examples) {
    hash.add(example.input_ids.size());
    for (size_t i = 0; i < example.input_ids.size(); ++i) {
      hash.add((uint64_t(uint32_t(example.input_ids[i])) << 32) | uint32_t(example.labels[i]));
    }
  }
  return hash.value();
}

int64_t json_count(const nlohmann::json& object, const char* key, std::string_view source) {
  const auto it = object.find(key);
  if (it == object.end() || !it->is_number_integer() || it->get<int64_t>() < 0) {
    fail("{}: \"{}\" must be a non-negative integer", source, key);
  }
  return it->get<int64_t>();
}

}  // namespace

// ---- Randomness -----------------------------------------------------------------------------

uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound) {
  if (bound == 0) fail("uniform_below: the bound must be at least 1");
  // Values below `threshold` would make some results one draw more likely than others.
  const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
  while (true) {
    const uint64_t value = rng();
    if (value >= threshold) return value % bound;
  }
}

void shuffle_in_place(std::span<int64_t> items, std::mt19937_64& rng) {
  for (size_t i = items.size(); i > 1; --i) {
    std::swap(items[i - 1], items[size_t(uniform_below(rng, i))]);
  }
}

std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed) {
  std::vector<int64_t> order(size_t(std::max<int64_t>(n, 0)));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  shuffle_in_place(order, rng);
  return order;
}

// ---- Split ----------------------------------------------------------------------------------

TrainEvalSplit split_train_eval(std::vector<Example> examples, double eval_fraction,
                                uint64_t seed) {
  if (!(eval_fraction >= 0.0 && eval_fraction < 1.0)) {
    fail("--eval-split must be in [0, 1), got {}", eval_fraction);
  }
  const int64_t n = int64_t(examples.size());
  const auto eval_count = int64_t(std::ceil(eval_fraction * double(n)));
  if (eval_count >= n) {
    fail("--eval-split {} of {} examples leaves none to train on", eval_fraction, n);
  }
  std::vector<bool> is_eval(size_t(n), false);
  const std::vector<int64_t> order = shuffled_order(n, derive_seed(seed, kEvalSplitStream, 0));
  for (int64_t i = 0; i < eval_count; ++i)
    is_eval[size_t(order[size_t(i)])] = true;
  TrainEvalSplit split;
  split.eval.reserve(size_t(eval_count));
  split.train.reserve(size_t(n - eval_count));
  for (int64_t i = 0; i < n; ++i) {
    (is_eval[size_t(i)] ? split.eval : split.train).push_back(std::move(examples[size_t(i)]));
  }
  return split;
}

// ---- Options, batches, position -------------------------------------------------------------

void BatchingOptions::validate() const {
  if (seq_len < 2) fail("--seq-len must be at least 2, got {}", seq_len);
  if (micro_batch < 1) fail("--micro-batch must be at least 1, got {}", micro_batch);
  if (grad_accum < 1) fail("--grad-accum must be at least 1, got {}", grad_accum);
}

int64_t MicroBatch::real_tokens() const {
  return std::accumulate(row_lengths.begin(), row_lengths.end(), int64_t(0));
}

std::string DataPosition::to_json() const {
  return fmt::format(R"({{"epoch":{},"row":{},"fingerprint":"{:016x}"}})", epoch, row, fingerprint);
}

DataPosition DataPosition::from_json(std::string_view text, std::string_view source) {
  const nlohmann::json parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_object()) fail("{}: not a JSON object", source);
  DataPosition position;
  position.epoch = json_count(parsed, "epoch", source);
  position.row = json_count(parsed, "row", source);
  const auto hex = parsed.find("fingerprint");
  const std::string digits = hex != parsed.end() && hex->is_string() ? hex->get<std::string>() : "";
  if (digits.size() != 16 || digits.find_first_not_of("0123456789abcdef") != std::string::npos) {
    fail("{}: \"fingerprint\" must be 16 lower-case hex digits", source);
  }
  position.fingerprint = std::stoull(digits, nullptr, 16);
  return position;
}

// ---- TrainBatcher ---------------------------------------------------------------------------

TrainBatcher::TrainBatcher(std::vector<Example> train, BatchingOptions options)
    : options_(options) {
  options_.validate();
  examples_ = prepare_examples(std::move(train), options_, dropped_examples_);
  if (examples_.empty()) {
    fail("no training example has a token to learn within --seq-len {} ({} dropped)",
         options_.seq_len, dropped_examples_);
  }
  for (const Example& example : examples_)
    tokens_per_epoch_ += int64_t(example.input_ids.size());
  fingerprint_ = data_fingerprint(examples_, options_);
  plan_epoch(0);
  rows_per_epoch_ = RowLayout(examples_, order_, stream_starts_, options_).rows();
}

int64_t TrainBatcher::micro_batches_per_epoch() const {
  return (rows_per_epoch_ + options_.micro_batch - 1) / options_.micro_batch;
}

int64_t TrainBatcher::steps_per_epoch() const {
  return (micro_batches_per_epoch() + options_.grad_accum - 1) / options_.grad_accum;
}

void TrainBatcher::plan_epoch(int64_t epoch) {
  order_ = shuffled_order(int64_t(examples_.size()),
                          derive_seed(options_.seed, kEpochStream, uint64_t(epoch)));
  if (options_.packing) stream_starts_ = stream_offsets(examples_, order_);
  epoch_ = epoch;
  next_row_ = 0;
}

void TrainBatcher::restore(const DataPosition& position) {
  if (position.fingerprint != fingerprint_) {
    fail(
        "resume: the training data or batching options differ from the checkpoint's (data "
        "fingerprint {:016x}, checkpoint {:016x})",
        fingerprint_, position.fingerprint);
  }
  if (position.epoch < 0 || position.row < 0 || position.row > rows_per_epoch_) {
    fail("resume: data position epoch {} row {} is outside the {} rows of an epoch", position.epoch,
         position.row, rows_per_epoch_);
  }
  plan_epoch(position.epoch);
  next_row_ = position.row;
}

MicroBatch TrainBatcher::make_micro_batch(int64_t first_row, int64_t rows) const {
  return build_micro_batch(RowLayout(examples_, order_, stream_starts_, options_), options_,
                           first_row, rows);
}

OptimizerStepBatch TrainBatcher::next_step() {
  if (next_row_ >= rows_per_epoch_) plan_epoch(epoch_ + 1);
  OptimizerStepBatch step;
  step.epoch = epoch_;
  step.step_in_epoch = next_row_ / (options_.micro_batch * options_.grad_accum);
  for (int64_t k = 0; k < options_.grad_accum && next_row_ < rows_per_epoch_; ++k) {
    const int64_t rows = std::min(options_.micro_batch, rows_per_epoch_ - next_row_);
    step.micro_batches.push_back(make_micro_batch(next_row_, rows));
    step.loss_tokens += step.micro_batches.back().loss_tokens;
    next_row_ += rows;
  }
  return step;
}

std::vector<MicroBatch> make_eval_batches(const std::vector<Example>& eval,
                                          const BatchingOptions& options) {
  options.validate();
  int64_t dropped = 0;
  const std::vector<Example> examples = prepare_examples(eval, options, dropped);
  std::vector<int64_t> order(examples.size());
  std::iota(order.begin(), order.end(), 0);
  const std::vector<int64_t> starts =
      options.packing ? stream_offsets(examples, order) : std::vector<int64_t>{0};
  const RowLayout layout(examples, order, starts, options);
  std::vector<MicroBatch> batches;
  for (int64_t row = 0; row < layout.rows(); row += options.micro_batch) {
    batches.push_back(build_micro_batch(layout, options, row,
                                        std::min(options.micro_batch, layout.rows() - row)));
  }
  return batches;
}

}  // namespace llamaq
