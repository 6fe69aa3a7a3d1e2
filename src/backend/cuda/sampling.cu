// Sampling on the device: the argmax of each logits row (greedy decoding), so a decode step
// copies one id per sequence to the host instead of the whole vocabulary of logits. One block per
// row-chunk in a first pass (so one long row spreads over many SMs), one block per row in a second;
// shared-memory trees keep (value, index) pairs with the rule of the CPU op: larger value wins,
// ties go to the lower index, NaN never wins.
#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxChunks = 64;
constexpr int kMinChunk = 1024;

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

// Reduces the block's candidates in shared memory; thread 0 gets the winner.
__device__ Candidate block_best(Candidate mine) {
  __shared__ Candidate shared[kThreads];
  shared[threadIdx.x] = mine;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride && better(shared[threadIdx.x + stride], shared[threadIdx.x])) {
      shared[threadIdx.x] = shared[threadIdx.x + stride];
    }
    __syncthreads();
  }
  return shared[0];
}

// Pass 1, block (chunk, row): the best of the row's columns [chunk * chunk_len, + chunk_len).
__global__ void argmax_chunks_kernel(const float* logits,  // [rows, vocab] f32
                                     int vocab, int chunk_len,
                                     Candidate* partial) {  // [rows, chunks]
  const float* row = logits + int64_t(blockIdx.y) * vocab;
  const int begin = blockIdx.x * chunk_len;
  const int end = min(vocab, begin + chunk_len);
  Candidate best{0.0f, -1};
  for (int i = begin + threadIdx.x; i < end; i += kThreads) {
    const Candidate c{row[i], i};
    if (better(c, best)) best = c;
  }
  const Candidate winner = block_best(best);
  if (threadIdx.x == 0) partial[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = winner;
}

// Pass 2, block per row: the best of the row's chunk winners.
__global__ void argmax_rows_kernel(const Candidate* partial, int chunks,
                                   int32_t* ids) {  // [rows] i32
  Candidate best{0.0f, -1};
  for (int i = threadIdx.x; i < chunks; i += kThreads) {
    const Candidate c = partial[int64_t(blockIdx.x) * chunks + i];
    if (better(c, best)) best = c;
  }
  const Candidate winner = block_best(best);
  if (threadIdx.x == 0) ids[blockIdx.x] = winner.index < 0 ? 0 : winner.index;
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
  require(rows <= 65535, op, "more than 65535 rows");
  if (rows == 0) return;
  // A 128k vocabulary in 64 chunks of 2k: one row fills 64 SMs instead of one.
  const int chunk_len = std::max(kMinChunk, (vocab + kMaxChunks - 1) / kMaxChunks);
  const int chunks = (vocab + chunk_len - 1) / chunk_len;
  Tensor partial = ctx.empty(DType::U8, {rows * chunks * int64_t(sizeof(Candidate))}, op);
  Candidate* partial_data = static_cast<Candidate*>(partial.data());
  argmax_chunks_kernel<<<dim3(unsigned(chunks), unsigned(rows)), kThreads, 0, ctx.stream()>>>(
      logits.data_as<const float>(), vocab, chunk_len, partial_data);
  check_launch(op, "argmax_chunks_kernel");
  argmax_rows_kernel<<<unsigned(rows), kThreads, 0, ctx.stream()>>>(partial_data, chunks,
                                                                   ids.data_as<int32_t>());
  check_launch(op, "argmax_rows_kernel");
}

}  // namespace llamaq::cuda
