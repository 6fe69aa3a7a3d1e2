#include <gtest/gtest.h>

#include <atomic>
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
          for (int64_t i = begin; i < end; ++i) hits[size_t(i)]++;
        });
      }
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)], 3) << threads << " " << n;
    }
  }
}

TEST(ThreadPool, RespectsTheMinimumChunk) {
  ThreadPool pool(4);
  std::atomic<int> calls = 0;
  pool.parallel_for(10, [&](int64_t, int64_t) { calls++; }, 8);
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
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum, 4950);
}

}  // namespace
}  // namespace llamaq
