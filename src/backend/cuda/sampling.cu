// Sampling on the device: the argmax of each logits row (greedy decoding), so a decode step
// copies one id per sequence to the host instead of the whole vocabulary of logits. One block per
// row; each thread scans a strided slice, then a shared-memory tree keeps (value, index) pairs
// with the rule of the CPU op: larger value wins, ties go to the lower index, NaN never wins.
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 512;

struct Candidate {
  float value;
  int index;  // -1: none yet
};

__device__ __forceinline__ bool better(Candidate a, Candidate b) {
  if (a.index < 0) return false;
  if (b.index < 0) return true;
  const bool a_nan = isnan(a.value), b_nan = isnan(b.value);
  if (a_nan != b_nan) return b_nan;
  if (a_nan) return a.index < b.index;
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

__global__ void argmax_kernel(const float* logits,  // [rows, vocab] f32
                              int vocab,
                              int32_t* ids) {       // [rows] i32
  __shared__ Candidate shared[kThreads];
  const float* row = logits + int64_t(blockIdx.x) * vocab;
  Candidate best{0.0f, -1};
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const Candidate c{row[i], i};
    if (better(c, best)) best = c;
  }
  shared[threadIdx.x] = best;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride && better(shared[threadIdx.x + stride], shared[threadIdx.x])) {
      shared[threadIdx.x] = shared[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) ids[blockIdx.x] = shared[0].index < 0 ? 0 : shared[0].index;
}

}  // namespace

void argmax(CudaContext& ctx, const Tensor& logits, Tensor& ids) {
  const char* op = "argmax";
  require_tensor(logits, DType::F32, 2, op, "logits");
  const int64_t rows = logits.dim(0);
  require_tensor(ids, DType::I32, 1, op, "ids");
  require_shape(ids, {rows}, op, "ids");
  require(logits.dim(1) > 0, op, "empty rows");
  const int vocab = checked_int(logits.dim(1), op, "vocabulary size");
  require(rows <= 2147483647, op, "too many rows");
  if (rows == 0) return;
  argmax_kernel<<<unsigned(rows), kThreads, 0, ctx.stream()>>>(logits.data_as<const float>(), vocab,
                                                              ids.data_as<int32_t>());
  check_launch(op, "argmax_kernel");
}

}  // namespace llamaq::cuda
