// CPU reference row-wise ops: embedding lookup, RMSNorm, RoPE, SwiGLU, residual add, argmax.
#include <cmath>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace llamaq::cpu {

void embedding(ThreadPool& pool, const Tensor& table, const Tensor& ids, Tensor& out) {
  const int64_t vocab = table.dim(0);
  const int32_t* id = ids.data_as<const int32_t>();
  for (int64_t t = 0; t < ids.numel(); ++t) {
    if (id[t] < 0 || id[t] >= vocab) fail("token id {} is out of range [0, {})", id[t], vocab);
  }
  const int64_t d = table.dim(1);
  float* o = out.data_as<float>();
  pool.parallel_for(ids.numel(), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) load_row_f32(table, id[t], o + t * d);
  });
}

// HF LlamaRMSNorm: x * rsqrt(mean(x^2) + eps), then times the weight (specs §4.3).
void rmsnorm(ThreadPool& pool, const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  const int64_t n = x.dim(0);
  const int64_t d = x.dim(1);
  std::vector<float> w(static_cast<size_t>(d));
  load_row_f32(weight.reshaped({1, d}), 0, w.data());
  const float* xs = x.data_as<const float>();
  float* os = out.data_as<float>();
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = xs + t * d;
      double sum_squares = 0;
      for (int64_t i = 0; i < d; ++i) sum_squares += double(row[i]) * row[i];
      const float inv_rms = float(1.0 / std::sqrt(sum_squares / double(d) + double(eps)));
      for (int64_t i = 0; i < d; ++i) os[t * d + i] = w[size_t(i)] * (row[i] * inv_rms);
    }
  });
}

// Angle = position * inv_freq in fp32 as HF computes it; cos/sin rounded from the exact value.
void rope(ThreadPool& pool, Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  const int64_t n = x.dim(0);
  const int64_t heads = x.dim(1);
  const int64_t head_dim = x.dim(2);
  const int64_t half = head_dim / 2;
  const float* freq = inv_freq.data_as<const float>();
  const int32_t* pos = positions.data_as<const int32_t>();
  float* xs = x.data_as<float>();
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    std::vector<float> cos_v(static_cast<size_t>(half));
    std::vector<float> sin_v(static_cast<size_t>(half));
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t j = 0; j < half; ++j) {
        const float angle = float(pos[t]) * freq[j];
        cos_v[size_t(j)] = float(std::cos(double(angle)));
        sin_v[size_t(j)] = float(std::sin(double(angle)));
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* v = xs + (t * heads + h) * head_dim;
        for (int64_t j = 0; j < half; ++j) {
          const float a = v[j];
          const float b = v[j + half];
          v[j] = a * cos_v[size_t(j)] - b * sin_v[size_t(j)];
          v[j + half] = b * cos_v[size_t(j)] + a * sin_v[size_t(j)];
        }
      }
    }
  });
}

void swiglu(ThreadPool& pool, const Tensor& gate, const Tensor& up, Tensor& out) {
  const float* g = gate.data_as<const float>();
  const float* u = up.data_as<const float>();
  float* o = out.data_as<float>();
  pool.parallel_for(
      gate.numel(),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      },
      4096);
}

void add_inplace(ThreadPool& pool, Tensor& x, const Tensor& y) {
  float* xs = x.data_as<float>();
  const float* ys = y.data_as<const float>();
  pool.parallel_for(
      x.numel(),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) xs[i] += ys[i];
      },
      4096);
}

void argmax(const Tensor& logits, Tensor& ids) {
  if (logits.dtype() != DType::F32 || logits.rank() != 2) fail("argmax: logits must be a f32 matrix");
  const int64_t rows = logits.dim(0);
  const int64_t vocab = logits.dim(1);
  if (ids.dtype() != DType::I32 || ids.rank() != 1 || ids.dim(0) != rows) {
    fail("argmax: ids must be i32 [{}]", rows);
  }
  if (vocab == 0) fail("argmax: empty rows");
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits.data_as<const float>() + r * vocab;
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; ++i) {
      if (row[i] > row[best] || (std::isnan(row[best]) && !std::isnan(row[i]))) best = i;
    }
    ids.data_as<int32_t>()[r] = int32_t(best);
  }
}

}  // namespace llamaq::cpu
