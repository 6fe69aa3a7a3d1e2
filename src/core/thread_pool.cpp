#include "core/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace llamaq {
namespace {

constexpr auto kSpinTime = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// Spins until done() or kSpinTime has passed; returns done().
template <typename Done>
bool spin_until(const Done& done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
  for (int i = 0;; ++i) {
    if (done()) return true;
    cpu_relax();
    if (i % 64 == 63 && std::chrono::steady_clock::now() > deadline) return done();
  }
}

// Guided chunk i over `units` units on `threads` threads, in units: rounds of one chunk per
// thread, each round taking half of what is left, then single units. False past the last.
bool guided_chunk(int64_t units, int64_t threads, int64_t i, int64_t& begin, int64_t& end) {
  int64_t start = 0;
  int64_t left = units;
  while (left >= 2 * threads) {
    const int64_t size = left / (2 * threads);
    if (i < threads) {
      begin = start + i * size;
      end = begin + size;
      return true;
    }
    i -= threads;
    start += threads * size;
    left -= threads * size;
  }
  if (i >= left) return false;
  begin = start + i;
  end = begin + 1;
  return true;
}

int64_t guided_chunk_count(int64_t units, int64_t threads) {
  int64_t count = 0;
  int64_t left = units;
  while (left >= 2 * threads) {
    count += threads;
    left -= threads * (left / (2 * threads));
  }
  return count + left;
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = int(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < n_threads; ++i)
    workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (auto& worker : workers_)
    worker.join();
}

// Claims and runs chunks until none is left.
void ThreadPool::run_chunks() {
  for (;;) {
    const int64_t i = next_chunk_.fetch_add(1);
    if (i >= job_chunks_) return;
    int64_t begin = job_chunk_size_ ? i * job_chunk_size_ : job_n_ * i / job_chunks_;
    int64_t end = job_chunk_size_ ? std::min(job_n_, begin + job_chunk_size_)
                                  : job_n_ * (i + 1) / job_chunks_;
    if (job_guided_grain_) {
      const int64_t grain = job_guided_grain_;
      guided_chunk((job_n_ + grain - 1) / grain, size(), i, begin, end);
      begin *= grain;
      end = std::min(job_n_, end * grain);
    }
    if (begin >= end) continue;
    try {
      (*job_)(begin, end);
    } catch (...) {
      std::lock_guard lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    const auto ready = [&] { return stopping_.load() || generation_.load() != seen; };
    if (!spin_until(ready)) {
      std::unique_lock lock(mutex_);
      work_ready_.wait(lock, ready);
    }
    if (stopping_.load()) return;
    seen = generation_.load();
    // Join only a loop that is still open; the caller waits for joined workers alone.
    joined_.fetch_add(1);
    if (open_.load()) run_chunks();
    joined_.fetch_sub(1);
  }
}

void ThreadPool::run(int64_t n, int64_t chunks, int64_t chunk_size,
                     const std::function<void(int64_t, int64_t)>& fn, int64_t guided_grain) {
  job_ = &fn;
  job_n_ = n;
  job_chunks_ = chunks;
  job_chunk_size_ = chunk_size;
  job_guided_grain_ = guided_grain;
  error_ = nullptr;
  next_chunk_.store(0);
  open_.store(true);
  {
    std::lock_guard lock(mutex_);  // a worker may be between its check and its wait
    generation_.fetch_add(1);
  }
  work_ready_.notify_all();
  run_chunks();
  // Every chunk is claimed; close the loop and wait for the workers still running one. (All
  // these atomics are sequentially consistent: a worker that joins after the close sees it.)
  open_.store(false);
  const auto workers_done = [&] { return joined_.load() == 0; };
  if (!spin_until(workers_done)) {
    while (!workers_done())
      std::this_thread::yield();  // a joined worker was descheduled
  }
  job_ = nullptr;
  std::exception_ptr error;
  {
    std::lock_guard lock(mutex_);
    error = error_;
  }
  if (error) std::rethrow_exception(error);
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn,
                              int64_t min_chunk) {
  if (n <= 0) return;
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  const int64_t chunks = std::min<int64_t>(size(), max_chunks);
  if (chunks == 1) {
    fn(0, n);
    return;
  }
  run(n, chunks, 0, fn);
}

void ThreadPool::parallel_for_chunks(int64_t n, int64_t chunk,
                                     const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  const int64_t chunks = (n + chunk - 1) / chunk;
  if (chunks == 1 || size() == 1) {
    fn(0, n);
    return;
  }
  run(n, chunks, chunk, fn);
}

void ThreadPool::parallel_for_guided(int64_t n, int64_t grain,
                                     const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t units = (n + grain - 1) / grain;
  if (units == 1 || size() == 1) {
    fn(0, n);
    return;
  }
  run(n, guided_chunk_count(units, size()), 0, fn, grain);
}

}  // namespace llamaq
