// The roofline of the GPU as measured here, not as printed on the datasheet: the device-memory
// bandwidth of a large device-to-device copy and the bf16 tensor-core rate of a large cuBLAS GEMM
// (fp32 accumulation), each the median of several timed runs after a warm-up (CUDA events).
#pragma once

namespace llamaq::cuda {

struct MeasuredPeaks {
  double bandwidth_gb_per_s = 0;  // bytes read + written per second / 1e9
  double bf16_tflop_per_s = 0;    // dense bf16 GEMM, fp32 accumulation
};

MeasuredPeaks measure_peaks(int device);

}  // namespace llamaq::cuda
