// Embedding lookup: out[t, :] = f32(table[ids[t], :]) for bf16, f16 or f32 tables. An id outside
// [0, vocab) gives a zero row and is reported through the context's status block; the backend
// raises it as an Error at its next synchronization (ids usually come from the host, where
// LlamaModel::forward has already checked them). The table may be pinned host memory (the CUDA
// backend keeps the embedding there): a row is read with 16-byte loads, one per thread, all in
// flight at once, so a decode step's row costs about one bus round trip.
#include <algorithm>
#include <cstdint>

#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

struct EmbeddingParams {
  const void* table;   // [vocab, d] bf16 | f16 | f32
  const int32_t* ids;  // [n] i32
  float* out;          // [n, d] f32
  int64_t vocab;
  int64_t d;
  DeviceStatus* status;  // host-mapped: where a bad id is reported
  bool vectorized;       // rows are whole 16-byte loads (16-byte aligned table, d fits)
};

template <typename T>
__global__ void embedding_kernel(EmbeddingParams p) {
  const int64_t t = blockIdx.x;
  const int32_t id = p.ids[t];
  float* row_out = p.out + t * p.d;
  if (id < 0 || id >= p.vocab) {
    if (threadIdx.x == 0 && atomicCAS(&p.status->bad_token_flag, 0, 1) == 0) {
      p.status->bad_token_id = id;
      p.status->bad_token_vocab = int32_t(p.vocab);
    }
    for (int64_t i = threadIdx.x; i < p.d; i += blockDim.x)
      row_out[i] = 0.0f;
    return;
  }
  const T* row = static_cast<const T*>(p.table) + int64_t(id) * p.d;
  if (p.vectorized) {
    constexpr int kPerLoad = 16 / sizeof(T);
    const uint4* loads = reinterpret_cast<const uint4*>(row);
    for (int64_t v = threadIdx.x; v < p.d / kPerLoad; v += blockDim.x) {
      const uint4 bits = loads[v];
      const T* values = reinterpret_cast<const T*>(&bits);
#pragma unroll
      for (int j = 0; j < kPerLoad; ++j)
        row_out[v * kPerLoad + j] = to_float(values[j]);
    }
    return;
  }
  for (int64_t i = threadIdx.x; i < p.d; i += blockDim.x)
    row_out[i] = to_float(row[i]);
}

void launch_embedding(const EmbeddingParams& p, DType dtype, int64_t n, cudaStream_t stream) {
  // A thread per 16-byte load of a row (up to 1024), so every load of the row is issued at once.
  const int64_t loads = p.d * int64_t(dtype_bits(dtype) / 8) / 16;
  const int kThreads = int(std::clamp<int64_t>((loads + 31) / 32 * 32, 128, 1024));
  const unsigned blocks = unsigned(n);
  switch (dtype) {
    case DType::BF16:
      embedding_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(p);
      break;
    case DType::F16:
      embedding_kernel<__half><<<blocks, kThreads, 0, stream>>>(p);
      break;
    default:
      embedding_kernel<float><<<blocks, kThreads, 0, stream>>>(p);
      break;
  }
  check_launch("embedding", "embedding_kernel");
}

}  // namespace

void embedding(CudaContext& ctx, const Tensor& table, const Tensor& ids, Tensor& out) {
  const char* op = "embedding";
  require_on_device(table, op, "table");
  require(table.rank() == 2 && is_float_weight(table.dtype()), op,
          "table must be a bf16, f16 or f32 matrix");
  require_tensor(ids, DType::I32, 1, op, "ids");
  const int64_t n = ids.dim(0);
  require_tensor(out, DType::F32, 2, op, "out");
  require_shape(out, {n, table.dim(1)}, op, "out");
  if (n == 0) return;
  checked_int(n, op, "tokens");
  const int64_t row_bytes = table.dim(1) * (dtype_bits(table.dtype()) / 8);
  const bool vectorized =
      row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(table.data()) % 16 == 0;
  const EmbeddingParams p{table.data(),
                          ids.data_as<const int32_t>(),
                          out.data_as<float>(),
                          table.dim(0),
                          table.dim(1),
                          ctx.device_status(),
                          vectorized};
  launch_embedding(p, table.dtype(), n, ctx.stream());
}

}  // namespace llamaq::cuda
