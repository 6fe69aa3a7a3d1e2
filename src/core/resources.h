// Process resource figures for summaries: peak resident memory and wall-clock time.
#pragma once

#include <chrono>
#include <cstdint>

namespace llamaq {

// Peak resident set size of this process, in bytes (getrusage ru_maxrss).
int64_t peak_resident_bytes();

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace llamaq
