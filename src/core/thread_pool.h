// A fixed pool of worker threads for data-parallel loops over rows. The calling thread takes
// part in every loop, so a pool of size 1 runs everything inline with no thread at all.
// Chunks are claimed by whichever thread is free, and the caller waits only for threads that
// joined the loop: a worker the OS has descheduled never holds a loop up, the caller runs its
// chunks instead. Threads spin briefly (about 0.2 ms) for the next loop before sleeping: a
// decode step runs a few hundred short loops, and waking sleeping threads for each would cost
// more than the loops themselves.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace llamaq {

class ThreadPool {
 public:
  // n_threads <= 0 means one per hardware thread.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint chunks covering [0, n), at most as many chunks as the pool
  // has threads, each at least min_chunk long; returns when all are done. An exception in fn is
  // rethrown here.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn,
                    int64_t min_chunk = 1);

  // Calls fn(begin, end) on the chunks [i * chunk, (i + 1) * chunk) of [0, n), claimed one at a
  // time by free threads (for loops whose threads may be slowed by other processes).
  void parallel_for_chunks(int64_t n, int64_t chunk,
                           const std::function<void(int64_t, int64_t)>& fn);

  // Calls fn(begin, end) on chunks of [0, n) that start at multiples of `grain`, claimed one at a
  // time by free threads, largest first: each round of one chunk per thread takes half of what
  // is left, down to single grains. Threads stream long contiguous runs, and still end within
  // about a grain of each other (fixed chunks leave up to a whole chunk's wait at the end).
  void parallel_for_guided(int64_t n, int64_t grain,
                           const std::function<void(int64_t, int64_t)>& fn);

 private:
  void run(int64_t n, int64_t chunks, int64_t chunk_size,
           const std::function<void(int64_t, int64_t)>& fn, int64_t guided_grain = 0);
  void run_chunks();
  void worker_loop();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable work_ready_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int64_t job_chunks_ = 0;
  int64_t job_chunk_size_ = 0;    // 0: chunk i is [n * i / chunks, n * (i + 1) / chunks)
  int64_t job_guided_grain_ = 0;  // > 0: guided chunks (parallel_for_guided)
  std::atomic<int64_t> next_chunk_ = 0;
  std::atomic<uint64_t> generation_ = 0;
  std::atomic<bool> open_ = false;  // a loop is running and threads may join it
  std::atomic<int> joined_ = 0;     // workers inside the current loop
  std::atomic<bool> stopping_ = false;
  std::exception_ptr error_;
};

}  // namespace llamaq
