// A progress bar for long work (loading, quantizing, evaluating) on stderr: redrawn in place on a
// terminal, a line every 10% otherwise (logs, pipes), and a final line with the elapsed time.
#pragma once

#include <cstdint>
#include <string>

#include "core/resources.h"

namespace llamaq {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, std::string unit = "");
  // Adds `n` done items; `detail` (e.g. the tensor name or a running figure) is shown after it.
  void advance(int64_t n = 1, const std::string& detail = "");
  // The final line: "label: total unit in X s" plus `summary`.
  void finish(const std::string& summary = "");

 private:
  void draw(const std::string& detail);

  std::string label_;
  std::string unit_;
  int64_t total_;
  int64_t done_ = 0;
  int last_decile_ = -1;
  bool terminal_;
  bool finished_ = false;
  Stopwatch clock_;
};

}  // namespace llamaq
