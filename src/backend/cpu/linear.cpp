// CPU reference linear: out[t, j] = sum_i x[t, i] * W[j, i], weights widened (or NF4 weights
// dequantized) to f32 a few rows at a time, so no dense copy of a weight ever exists.
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#include "quant/nf4_codec.h"

namespace llamaq::cpu {

void load_row_f32(const Tensor& matrix, int64_t row, float* out) {
  const int64_t n = matrix.dim(-1);
  const int64_t offset = row * n;
  switch (matrix.dtype()) {
    case DType::F32: {
      const float* src = matrix.data_as<const float>() + offset;
      for (int64_t i = 0; i < n; ++i)
        out[i] = src[i];
      return;
    }
    case DType::BF16: {
      const uint16_t* src = matrix.data_as<const uint16_t>() + offset;
      for (int64_t i = 0; i < n; ++i)
        out[i] = bf16_to_float(src[i]);
      return;
    }
    case DType::F16: {
      const uint16_t* src = matrix.data_as<const uint16_t>() + offset;
      for (int64_t i = 0; i < n; ++i)
        out[i] = fp16_to_float(src[i]);
      return;
    }
    default:
      fail("cpu: unsupported weight dtype {}", dtype_name(matrix.dtype()));
  }
}

float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int lane = 0; lane < 8; ++lane)
      acc[lane] += a[i + lane] * b[i + lane];
  }
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i)
    sum += a[i] * b[i];
  return sum;
}

void check_linear_shapes(const Tensor& x, const LinearWeight& w, const Tensor& out) {
  const int64_t in = w.in_features();
  const int64_t out_features = w.out_features();
  if (x.dim(1) != in || out.dim(0) != x.dim(0) || out.dim(1) != out_features) {
    fail("cpu linear: x {} and out {} do not fit weight [{}, {}]", shape_to_string(x.shape()),
         shape_to_string(out.shape()), out_features, in);
  }
}

void linear(ThreadPool& pool, const Tensor& x, const LinearWeight& w, Tensor& out) {
  const int64_t n = x.dim(0);
  const int64_t in = w.in_features();
  const int64_t out_features = w.out_features();
  check_linear_shapes(x, w, out);
  const float* xs = x.data_as<const float>();
  float* ys = out.data_as<float>();
  // Each thread takes a band of weight rows, widens a few rows at a time and applies them to
  // every token, so each weight byte is read once per call.
  constexpr int64_t kRowsPerStep = 4;
  pool.parallel_for(
      out_features,
      [&](int64_t begin, int64_t end) {
        std::vector<float> rows(size_t(kRowsPerStep * in));
        for (int64_t j0 = begin; j0 < end; j0 += kRowsPerStep) {
          const int64_t count = std::min(kRowsPerStep, end - j0);
          if (w.nf4) {
            nf4::dequantize_rows(*w.nf4, j0, count, rows.data());
          } else {
            for (int64_t r = 0; r < count; ++r)
              load_row_f32(w.weight, j0 + r, &rows[size_t(r * in)]);
          }
          for (int64_t t = 0; t < n; ++t) {
            const float* xt = xs + t * in;
            for (int64_t r = 0; r < count; ++r) {
              ys[t * out_features + j0 + r] = dot_f32(xt, &rows[size_t(r * in)], in);
            }
          }
        }
      },
      16);
}

}  // namespace llamaq::cpu
