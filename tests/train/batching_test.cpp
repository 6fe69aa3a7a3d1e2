// Batching: truncation, packing boundaries, shuffling, the eval split, loss-token counts and the
// resumable data position.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "train/batching.h"
#include "train_test_support.h"

namespace llamaq::test {
namespace {

constexpr int32_t kPad = 7;

// Example k has ids 1000k .. 1000k + length - 1, so an id tells its example and position.
std::vector<Example> numbered_examples(const std::vector<int64_t>& lengths) {
  std::vector<Example> examples;
  for (size_t k = 0; k < lengths.size(); ++k)
    examples.push_back(numbered_example(int32_t(1000 * (k + 1)), lengths[k]));
  return examples;
}

BatchingOptions options_with(int64_t seq_len, bool packing, int64_t micro_batch, int64_t grad_accum,
                             uint64_t seed = 1) {
  BatchingOptions options;
  options.seq_len = seq_len;
  options.packing = packing;
  options.micro_batch = micro_batch;
  options.grad_accum = grad_accum;
  options.seed = seed;
  options.pad_id = kPad;
  return options;
}

// The real tokens of every row of every micro-batch, in stream order.
std::vector<int32_t> real_ids(const std::vector<MicroBatch>& batches) {
  std::vector<int32_t> ids;
  for (const MicroBatch& batch : batches) {
    for (int64_t r = 0; r < batch.rows; ++r) {
      const auto row = batch.input_ids.begin() + r * batch.columns;
      ids.insert(ids.end(), row, row + batch.row_lengths[size_t(r)]);
    }
  }
  return ids;
}

std::vector<MicroBatch> one_epoch(TrainBatcher& batcher) {
  std::vector<MicroBatch> batches;
  for (int64_t s = 0; s < batcher.steps_per_epoch(); ++s) {
    OptimizerStepBatch step = batcher.next_step();
    for (MicroBatch& batch : step.micro_batches)
      batches.push_back(std::move(batch));
  }
  return batches;
}

int64_t recount(const MicroBatch& batch) {
  int64_t count = 0;
  for (int64_t r = 0; r < batch.rows; ++r) {
    const auto row = batch.labels.begin() + r * batch.columns;
    count += count_loss_tokens(std::span(&*row, size_t(batch.row_lengths[size_t(r)])));
  }
  return count;
}

TEST(Shuffle, SameOnEveryPlatformForASeed) {
  std::mt19937_64 standard;  // the C++ standard fixes its 10000th output
  standard.discard(9999);
  EXPECT_EQ(standard(), 9981545732273789042ULL);
  // Golden: a change here changes every user's data order.
  EXPECT_EQ(shuffled_order(10, 42), (std::vector<int64_t>{1, 7, 9, 0, 3, 8, 4, 2, 5, 6}));
  EXPECT_EQ(shuffled_order(10, 42), shuffled_order(10, 42));
  EXPECT_NE(shuffled_order(10, 42), shuffled_order(10, 43));
  std::vector<int64_t> sorted = shuffled_order(1000, 5);
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> identity(1000);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_EQ(sorted, identity);
  EXPECT_TRUE(shuffled_order(0, 1).empty());
}

TEST(Shuffle, BoundedDrawsAreInRangeAndCoverIt) {
  std::mt19937_64 rng(3);
  EXPECT_EQ(uniform_below(rng, 1), 0u);
  std::vector<int> seen(6, 0);
  for (int i = 0; i < 6000; ++i)
    ++seen[size_t(uniform_below(rng, 6))];
  for (const int count : seen) {
    EXPECT_GT(count, 850);
    EXPECT_LT(count, 1150);
  }
  EXPECT_LT(uniform_below(rng, ~0ULL), ~0ULL);
  expect_error([&] { uniform_below(rng, 0); }, {"at least 1"});
}

TEST(EvalSplit, SameExamplesEveryRunForASeedInFileOrder) {
  const std::vector<Example> examples = numbered_examples(std::vector<int64_t>(40, 3));
  const TrainEvalSplit a = split_train_eval(examples, 0.05, 9);
  const TrainEvalSplit b = split_train_eval(examples, 0.05, 9);
  ASSERT_EQ(a.eval.size(), 2u);  // ceil(0.05 * 40)
  ASSERT_EQ(a.train.size(), 38u);
  for (size_t i = 0; i < a.eval.size(); ++i)
    EXPECT_EQ(a.eval[i].input_ids, b.eval[i].input_ids);
  EXPECT_LT(a.eval[0].input_ids[0], a.eval[1].input_ids[0]);
  std::set<int32_t> all;
  for (const auto* part : {&a.train, &a.eval}) {
    for (const Example& example : *part)
      all.insert(example.input_ids[0]);
  }
  EXPECT_EQ(all.size(), 40u);
  bool differs = false;
  for (uint64_t seed = 10; seed < 20 && !differs; ++seed) {
    differs = split_train_eval(examples, 0.05, seed).eval[0].input_ids != a.eval[0].input_ids;
  }
  EXPECT_TRUE(differs);
  EXPECT_EQ(split_train_eval(examples, 0.0, 9).train.size(), 40u);
  EXPECT_EQ(split_train_eval(examples, 0.001, 9).eval.size(), 1u);
}

TEST(EvalSplit, RejectsFractionsOutsideRangeOrLeavingNoTraining) {
  const std::vector<Example> examples = numbered_examples({3, 3});
  expect_error([&] { split_train_eval(examples, 1.0, 0); }, {"--eval-split must be in [0, 1)"});
  expect_error([&] { split_train_eval(examples, -0.1, 0); }, {"--eval-split"});
  expect_error([&] { split_train_eval(examples, 0.6, 0); }, {"leaves none to train on"});
}

TEST(Truncation, KeepsTheBeginningAndPadsToTheLongestRow) {
  TrainBatcher batcher(numbered_examples({10, 3, 5}), options_with(6, false, 3, 1));
  EXPECT_EQ(batcher.rows_per_epoch(), 3);
  EXPECT_EQ(batcher.tokens_per_epoch(), 6 + 3 + 5);
  const OptimizerStepBatch step = batcher.next_step();
  ASSERT_EQ(step.micro_batches.size(), 1u);
  const MicroBatch& batch = step.micro_batches[0];
  EXPECT_EQ(batch.rows, 3);
  EXPECT_EQ(batch.columns, 6);
  EXPECT_EQ(batch.real_tokens(), 14);
  for (int64_t r = 0; r < 3; ++r) {
    const int32_t first = batch.input_ids[size_t(r * 6)];
    const int64_t length = batch.row_lengths[size_t(r)];
    EXPECT_EQ(length, first == 1000 ? 6 : first == 2000 ? 3 : 5);
    for (int64_t c = 0; c < 6; ++c) {
      const size_t i = size_t(r * 6 + c);
      EXPECT_EQ(batch.input_ids[i], c < length ? first + c : kPad);
      EXPECT_EQ(batch.labels[i], c < length ? first + c : kIgnoreIndex);
    }
    EXPECT_EQ(batch.segment_starts[size_t(r)], std::vector<int64_t>{0});
  }
  EXPECT_EQ(batch.loss_tokens, 5 + 2 + 4);
  EXPECT_EQ(step.loss_tokens, batch.loss_tokens);
}

TEST(Truncation, PadToSeqLenGivesFixedShapes) {
  BatchingOptions options = options_with(16, false, 2, 1);
  options.pad_to_seq_len = true;
  TrainBatcher batcher(numbered_examples({4, 5}), options);
  EXPECT_EQ(batcher.next_step().micro_batches[0].columns, 16);
}

TEST(Truncation, ExamplesLeftWithoutALossTokenAreDropped) {
  std::vector<Example> examples = numbered_examples({8, 4});
  std::fill(examples[0].labels.begin(), examples[0].labels.begin() + 6, kIgnoreIndex);
  TrainBatcher batcher(examples, options_with(5, false, 1, 1));
  EXPECT_EQ(batcher.dropped_examples(), 1);
  EXPECT_EQ(batcher.rows_per_epoch(), 1);
  std::fill(examples[1].labels.begin(), examples[1].labels.end(), kIgnoreIndex);
  expect_error([&] { TrainBatcher(examples, options_with(5, false, 1, 1)); },
               {"no training example has a token to learn within --seq-len 5 (2 dropped)"});
}

TEST(Packing, RowsOfExactlySeqLenWithNoLossAcrossExampleBoundaries) {
  const std::vector<int64_t> lengths = {5, 3, 6, 9, 2};
  TrainBatcher batcher(numbered_examples(lengths), options_with(4, true, 2, 1));
  EXPECT_EQ(batcher.rows_per_epoch(), 7);  // 25 tokens
  const std::vector<MicroBatch> batches = one_epoch(batcher);
  ASSERT_EQ(batches.size(), 4u);
  for (const MicroBatch& batch : batches) {
    EXPECT_EQ(batch.columns, 4);
    EXPECT_EQ(batch.loss_tokens, recount(batch));
    for (int64_t r = 0; r < batch.rows; ++r) {
      std::vector<int64_t> starts;
      for (int64_t c = 0; c < batch.row_lengths[size_t(r)]; ++c) {
        const size_t i = size_t(r * 4 + c);
        const int32_t id = batch.input_ids[i];
        const bool example_start = id % 1000 == 0;
        EXPECT_EQ(batch.labels[i], example_start ? kIgnoreIndex : id);
        if (c == 0 || example_start) starts.push_back(c);
      }
      EXPECT_EQ(batch.segment_starts[size_t(r)], starts);
    }
  }
  EXPECT_EQ(batches.back().row_lengths.back(), 1);  // 25 = 6 * 4 + 1, then padding
  EXPECT_EQ(batches.back().input_ids.back(), kPad);
  EXPECT_EQ(batches.back().labels.back(), kIgnoreIndex);
  // The stream is every example once, whole and in order inside itself.
  const std::vector<int32_t> ids = real_ids(batches);
  std::vector<int64_t> seen;
  for (size_t i = 0; i < ids.size();) {
    const int32_t first = ids[i];
    ASSERT_EQ(first % 1000, 0);
    const int64_t length = lengths[size_t(first / 1000 - 1)];
    for (int64_t t = 0; t < length; ++t)
      ASSERT_EQ(ids[i + size_t(t)], first + t);
    seen.push_back(first / 1000);
    i += size_t(length);
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3, 4, 5}));
}

TEST(Steps, MicroBatchesGroupIntoStepsThatNeverCrossAnEpoch) {
  TrainBatcher batcher(numbered_examples(std::vector<int64_t>(10, 3)),
                       options_with(8, false, 3, 2));
  EXPECT_EQ(batcher.micro_batches_per_epoch(), 4);
  EXPECT_EQ(batcher.steps_per_epoch(), 2);
  const std::vector<std::vector<int64_t>> expected_rows = {{3, 3}, {3, 1}, {3, 3}, {3, 1}};
  for (size_t s = 0; s < expected_rows.size(); ++s) {
    const OptimizerStepBatch step = batcher.next_step();
    EXPECT_EQ(step.epoch, int64_t(s / 2));
    EXPECT_EQ(step.step_in_epoch, int64_t(s % 2));
    std::vector<int64_t> rows;
    int64_t loss_tokens = 0;
    for (const MicroBatch& batch : step.micro_batches) {
      rows.push_back(batch.rows);
      loss_tokens += batch.loss_tokens;
    }
    EXPECT_EQ(rows, expected_rows[s]);
    EXPECT_EQ(step.loss_tokens, loss_tokens);
    EXPECT_EQ(step.loss_tokens, 2 * int64_t(std::accumulate(rows.begin(), rows.end(), 0)));
  }
}

TEST(Steps, EachEpochIsAFreshShuffleReproducibleFromTheSeed) {
  const std::vector<Example> examples = numbered_examples(std::vector<int64_t>(12, 2));
  TrainBatcher a(examples, options_with(4, false, 1, 1, 5));
  TrainBatcher b(examples, options_with(4, false, 1, 1, 5));
  TrainBatcher other_seed(examples, options_with(4, false, 1, 1, 6));
  const std::vector<int32_t> a0 = real_ids(one_epoch(a));
  const std::vector<int32_t> a1 = real_ids(one_epoch(a));
  EXPECT_EQ(a0, real_ids(one_epoch(b)));
  EXPECT_EQ(a1, real_ids(one_epoch(b)));
  EXPECT_NE(a0, a1);
  EXPECT_NE(a0, real_ids(one_epoch(other_seed)));
}

TEST(Resume, PositionRoundTripContinuesExactlyAcrossEpochs) {
  const std::vector<Example> examples = numbered_examples({5, 3, 6, 9, 2, 7, 4});
  for (const bool packing : {false, true}) {
    SCOPED_TRACE(packing);
    const BatchingOptions options = options_with(4, packing, 2, 2, 11);
    TrainBatcher uninterrupted(examples, options);
    std::vector<OptimizerStepBatch> reference;
    for (int s = 0; s < 9; ++s)
      reference.push_back(uninterrupted.next_step());

    TrainBatcher first_run(examples, options);
    for (int s = 0; s < 4; ++s)
      first_run.next_step();
    const std::string saved = first_run.position().to_json();

    TrainBatcher resumed(examples, options);
    resumed.restore(DataPosition::from_json(saved));
    EXPECT_EQ(resumed.position(), first_run.position());
    for (size_t s = 4; s < reference.size(); ++s) {
      const OptimizerStepBatch step = resumed.next_step();
      EXPECT_EQ(step.epoch, reference[s].epoch);
      EXPECT_EQ(step.loss_tokens, reference[s].loss_tokens);
      ASSERT_EQ(step.micro_batches.size(), reference[s].micro_batches.size());
      for (size_t m = 0; m < step.micro_batches.size(); ++m) {
        EXPECT_EQ(step.micro_batches[m].input_ids, reference[s].micro_batches[m].input_ids);
        EXPECT_EQ(step.micro_batches[m].labels, reference[s].micro_batches[m].labels);
      }
    }
    EXPECT_GE(reference.back().epoch, 2);
  }
}

TEST(Resume, OtherDataOrOptionsAreRefused) {
  const std::vector<Example> examples = numbered_examples({5, 3, 6});
  TrainBatcher batcher(examples, options_with(4, false, 1, 1, 1));
  batcher.next_step();
  const DataPosition saved = batcher.position();
  TrainBatcher other_seed(examples, options_with(4, false, 1, 1, 2));
  expect_error([&] { other_seed.restore(saved); }, {"resume: the training data or batching"});
  TrainBatcher other_data(numbered_examples({5, 3, 6, 2}), options_with(4, false, 1, 1, 1));
  expect_error([&] { other_data.restore(saved); }, {"differ from the checkpoint's"});
  DataPosition past_end = saved;
  past_end.row = 4;
  expect_error([&] { batcher.restore(past_end); }, {"outside the 3 rows of an epoch"});
}

TEST(Resume, PositionJson) {
  const DataPosition position{3, 17, 0x0123456789abcdefULL};
  EXPECT_EQ(position.to_json(), R"({"epoch":3,"row":17,"fingerprint":"0123456789abcdef"})");
  EXPECT_EQ(DataPosition::from_json(position.to_json()), position);
  expect_error([] { DataPosition::from_json("[]", "ckpt/state.json"); },
               {"ckpt/state.json: not a JSON object"});
  expect_error([] { DataPosition::from_json(R"({"epoch":-1,"row":0,"fingerprint":"0"})"); },
               {"\"epoch\" must be a non-negative integer"});
  expect_error([] { DataPosition::from_json(R"({"epoch":1,"row":0,"fingerprint":"12"})"); },
               {"16 lower-case hex digits"});
  expect_error([] { DataPosition::from_json("{"); }, {"not a JSON object"});
}

TEST(EvalBatches, FileOrderSameRowRulesAndTotals) {
  const std::vector<Example> examples = numbered_examples({5, 3, 6});
  const std::vector<MicroBatch> truncated =
      make_eval_batches(examples, options_with(4, false, 2, 9));
  ASSERT_EQ(truncated.size(), 2u);
  EXPECT_EQ(real_ids(truncated), (std::vector<int32_t>{1000, 1001, 1002, 1003, 2000, 2001, 2002,
                                                       3000, 3001, 3002, 3003}));
  const std::vector<MicroBatch> packed = make_eval_batches(examples, options_with(4, true, 3, 1));
  ASSERT_EQ(packed.size(), 2u);
  EXPECT_EQ(packed[0].rows, 3);
  EXPECT_EQ(packed[1].rows, 1);
  EXPECT_EQ(real_ids(packed).size(), 14u);
  int64_t loss_tokens = 0;
  for (const MicroBatch& batch : packed) {
    EXPECT_EQ(batch.loss_tokens, recount(batch));
    loss_tokens += batch.loss_tokens;
  }
  EXPECT_EQ(loss_tokens, 14 - 4 - 1);  // 4 row starts, 1 example start inside a row
  EXPECT_TRUE(make_eval_batches({}, options_with(4, false, 2, 1)).empty());
}

TEST(Options, InvalidSizesAreRejected) {
  expect_error([] { options_with(1, false, 1, 1).validate(); }, {"--seq-len must be at least 2"});
  expect_error([] { options_with(8, false, 0, 1).validate(); }, {"--micro-batch"});
  expect_error([] { options_with(8, false, 1, 0).validate(); }, {"--grad-accum"});
  std::vector<Example> mismatched = numbered_examples({4});
  mismatched[0].labels.pop_back();
  expect_error([&] { TrainBatcher(mismatched, options_with(8, false, 1, 1)); },
               {"4 input ids but 3 labels"});
}

}  // namespace
}  // namespace llamaq::test
