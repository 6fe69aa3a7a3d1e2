#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace llamaq {
namespace {

TEST(ThreadPool, CoversEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 2, 7, 97, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      for (int round = 0; round < 3; ++round) {
        pool.parallel_for(n, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i)
            hits[size_t(i)]++;
        });
      }
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(hits[size_t(i)], 3) << threads << " " << n;
    }
  }
}

TEST(ThreadPool, RespectsTheMinimumChunk) {
  ThreadPool pool(4);
  std::atomic<int> calls = 0;
  pool.parallel_for(
      10, [&](int64_t, int64_t) { calls++; }, 8);
  EXPECT_EQ(calls, 1);
}

TEST(ThreadPool, RethrowsAWorkerException) {
  ThreadPool pool(3);
  EXPECT_THROW(pool.parallel_for(30,
                                 [](int64_t begin, int64_t) {
                                   if (begin > 0) fail("boom");
                                 }),
               Error);
  // The pool keeps working after an exception.
  std::atomic<int64_t> sum = 0;
  pool.parallel_for(100, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      sum += i;
  });
  EXPECT_EQ(sum, 4950);
}

TEST(ThreadPool, ChunkedLoopsCoverEveryIndexOnceWithTheirChunkBounds) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (const auto& [n, chunk] :
         {std::pair<int64_t, int64_t>{1, 16}, {97, 16}, {1000, 7}, {64, 64}}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<int> bad_bounds = 0;
      pool.parallel_for_chunks(n, chunk, [&](int64_t begin, int64_t end) {
        if (begin % chunk != 0 || (end - begin != chunk && end != n)) bad_bounds++;
        for (int64_t i = begin; i < end; ++i)
          hits[size_t(i)]++;
      });
      EXPECT_EQ(bad_bounds, 0);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(hits[size_t(i)], 1) << threads << " " << n;
    }
  }
}

TEST(ThreadPool, GuidedLoopsCoverEveryIndexOnceLargestChunksFirst) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (const auto& [n, grain] :
         {std::pair<int64_t, int64_t>{1, 16}, {97, 16}, {1000, 7}, {14336, 16}, {64, 64}}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::mutex mutex;
      std::vector<std::pair<int64_t, int64_t>> chunks;
      pool.parallel_for_guided(n, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          hits[size_t(i)]++;
        std::lock_guard lock(mutex);
        chunks.emplace_back(begin, end);
      });
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(hits[size_t(i)], 1) << threads << " " << n;
      std::sort(chunks.begin(), chunks.end());
      for (size_t c = 0; c < chunks.size(); ++c) {
        EXPECT_EQ(chunks[c].first % grain, 0) << "chunk " << c;
        // Sizes never grow along the rows (the last chunk may be cut short by n).
        if (c + 1 < chunks.size() && chunks[c + 1].second < n) {
          EXPECT_GE(chunks[c].second - chunks[c].first, chunks[c + 1].second - chunks[c + 1].first);
        }
      }
      // With several threads and enough grains, the first chunk is a long run (a quarter of the
      // grains on 2 threads) and the last ones single grains.
      if (threads > 1 && n / grain >= 4 * threads) {
        EXPECT_GE(chunks.front().second, n / grain / (2 * threads) * grain);
        EXPECT_LE(chunks.back().second - chunks.back().first, grain);
      }
    }
  }
}

TEST(ThreadPool, ManyShortLoopsInARowFinish) {
  // The join protocol under churn: loops far shorter than a worker's wake-up.
  ThreadPool pool(3);
  std::atomic<int64_t> sum = 0;
  for (int round = 0; round < 20000; ++round) {
    pool.parallel_for(3, [&](int64_t b, int64_t e) { sum += e - b; });
  }
  EXPECT_EQ(sum, 60000);
}

}  // namespace
}  // namespace llamaq
