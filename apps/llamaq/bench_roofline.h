// The roofline `llamaq bench` reports each figure against, measured on this machine: memory
// bandwidth (decode reads every weight once per step) and, on the GPU, the bf16 tensor-core rate
// (prefill is compute-bound).
#pragma once

#include <string>

namespace llamaq::cli {

struct Roofline {
  double bandwidth_gb_per_s = 0;
  double tflop_per_s = 0;  // 0: not measured (CPU)
  std::string how;         // one line: what was measured
};

Roofline measure_roofline(const std::string& device, int threads);

}  // namespace llamaq::cli
