// From examples to optimizer steps: the deterministic train/eval split, per-epoch shuffling,
// truncation or packing into rows of at most --seq-len tokens, micro-batches of B rows, optimizer
// steps of K micro-batches, loss-token counts for transformers' num_items_in_batch
// normalisation, and a data position that --resume restores exactly.
//
// Rows. Without packing, each example is one row; an example longer than seq_len keeps its first
// seq_len tokens. An example with no loss token (after that truncation) is dropped: it would only
// cost compute (counted in dropped_examples()). With packing, an epoch's examples are concatenated
// in their shuffled order and the stream is cut into rows of exactly seq_len tokens (an example may
// continue on the next row; the last row is padded). At every example boundary the label of the
// example's first token is kIgnoreIndex, so no loss predicts one document from the previous one.
// Attention still runs across documents inside a packed row, and positions run 0..seq_len-1 across
// the row — the usual simplification of packed training (transformers' group_texts);
// MicroBatch::segment_starts tells a trainer where documents begin should it want to restart
// positions or block attention.
//
// Padding is on the right with the pad id and label kIgnoreIndex; under causal attention it never
// changes the logits of real tokens, so no attention mask is needed.
//
// Loss normalisation: each micro-batch's summed cross-entropy is divided by the loss tokens of
// its whole optimizer step (OptimizerStepBatch::loss_tokens), which makes the step's gradient
// independent of how it is split into micro-batches (transformers >= 4.46 num_items_in_batch).
// Counts follow count_loss_tokens(): position 0 of a row is never a target.
//
// Epochs. Every optimizer step stays inside one epoch (the last step of an epoch may have fewer
// micro-batches, and the last micro-batch fewer rows), as transformers' Trainer does.
//
// Determinism. Shuffles use std::mt19937_64 (fully specified by the standard) with a Fisher-Yates
// and an unbiased bounded draw written here (std::uniform_int_distribution and std::shuffle
// differ between standard libraries), so a seed gives the same order on every platform.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "train/dataset.h"

namespace llamaq {

// ---- Seeded randomness ----------------------------------------------------------------------

// A uniform integer in [0, bound) by rejection sampling (no modulo bias); bound >= 1.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound);
// Fisher-Yates: for i = n-1 down to 1, swap items[i] with items[uniform_below(i + 1)].
void shuffle_in_place(std::span<int64_t> items, std::mt19937_64& rng);
// 0..n-1 shuffled by an mt19937_64 seeded with `seed`.
std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed);

// ---- Train/eval split -----------------------------------------------------------------------

struct TrainEvalSplit {
  std::vector<Example> train;  // file order
  std::vector<Example> eval;   // file order
};

// Holds out ceil(eval_fraction * n) examples (as datasets' train_test_split counts), chosen by a
// shuffle seeded from `seed`: the same examples every run for a seed. eval_fraction in [0, 1);
// throws when nothing would be left to train on.
TrainEvalSplit split_train_eval(std::vector<Example> examples, double eval_fraction, uint64_t seed);

// ---- Batches --------------------------------------------------------------------------------

struct BatchingOptions {
  int64_t seq_len = 2048;       // tokens per row at most (packing: exactly)
  bool packing = false;         // concatenate examples into full rows instead of one per row
  int64_t micro_batch = 1;      // rows per micro-batch (B)
  int64_t grad_accum = 1;       // micro-batches per optimizer step (K)
  uint64_t seed = 0;            // epoch shuffles
  int32_t pad_id = 0;           // input id of padding positions (ExampleEncoder::pad_id())
  bool pad_to_seq_len = false;  // pad every micro-batch to seq_len columns, not its longest row

  void validate() const;  // throws llamaq::Error for sizes < 1 or seq_len < 2
};

// B rows of `columns` tokens, row-major, right-padded.
struct MicroBatch {
  int64_t rows = 0;
  int64_t columns = 0;
  std::vector<int32_t> input_ids;    // rows * columns
  std::vector<int32_t> labels;       // rows * columns; kIgnoreIndex at masks and padding
  std::vector<int64_t> row_lengths;  // real (non-padding) tokens of each row
  std::vector<std::vector<int64_t>> segment_starts;  // per row: columns where an example starts
  int64_t loss_tokens = 0;                           // count_loss_tokens() summed over rows

  int64_t real_tokens() const;  // sum of row_lengths (for tokens/s)
};

struct OptimizerStepBatch {
  std::vector<MicroBatch> micro_batches;  // 1..K
  int64_t loss_tokens = 0;                // over all micro-batches: divide each loss sum by this
  int64_t epoch = 0;                      // 0-based
  int64_t step_in_epoch = 0;
};

// Where the data stream stands: the next row of `epoch`'s shuffled row list. `fingerprint`
// identifies the training examples and batching options, so resuming with other data fails
// instead of silently continuing elsewhere.
struct DataPosition {
  int64_t epoch = 0;
  int64_t row = 0;
  uint64_t fingerprint = 0;

  // {"epoch":E,"row":R,"fingerprint":"<16 hex digits>"}
  std::string to_json() const;
  // Throws llamaq::Error (naming `source`) for malformed text.
  static DataPosition from_json(std::string_view text, std::string_view source = "data position");
  friend bool operator==(const DataPosition&, const DataPosition&) = default;
};

// The training stream: an endless sequence of optimizer steps, epoch after epoch, each epoch
// shuffled with a seed derived from (options.seed, epoch).
class TrainBatcher {
 public:
  TrainBatcher(std::vector<Example> train, BatchingOptions options);

  const BatchingOptions& options() const { return options_; }
  int64_t examples() const { return int64_t(examples_.size()); }
  int64_t dropped_examples() const { return dropped_examples_; }
  int64_t rows_per_epoch() const { return rows_per_epoch_; }
  int64_t micro_batches_per_epoch() const;
  int64_t steps_per_epoch() const;
  int64_t tokens_per_epoch() const { return tokens_per_epoch_; }  // real tokens, no padding

  DataPosition position() const { return {epoch_, next_row_, fingerprint_}; }
  // Continues from a saved position; throws when it belongs to other data or options, or lies
  // outside the epoch.
  void restore(const DataPosition& position);

  // The next optimizer step's micro-batches; moves to the next epoch when this one is done.
  OptimizerStepBatch next_step();

 private:
  void plan_epoch(int64_t epoch);
  MicroBatch make_micro_batch(int64_t first_row, int64_t rows) const;

  std::vector<Example> examples_;
  BatchingOptions options_;
  int64_t dropped_examples_ = 0;
  int64_t rows_per_epoch_ = 0;
  int64_t tokens_per_epoch_ = 0;
  uint64_t fingerprint_ = 0;
  int64_t epoch_ = 0;
  int64_t next_row_ = 0;
  std::vector<int64_t> order_;          // this epoch's example order
  std::vector<int64_t> stream_starts_;  // packing: offset of order_[i] in the token stream
};

// The eval set as micro-batches of options.micro_batch rows, in file order, with the same row
// rules as training (truncation or packing). The eval loss is the sum of their cross-entropies
// over the sum of their loss_tokens.
std::vector<MicroBatch> make_eval_batches(const std::vector<Example>& eval,
                                          const BatchingOptions& options);

}  // namespace llamaq
