#include "backend/cpu/backward.h"

#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#include "quant/nf4_codec.h"

namespace llamaq::cpu {

void rmsnorm_backward(ThreadPool& pool, const Tensor& x, const Tensor& weight, float eps,
                      const Tensor& dy, Tensor& dx) {
  const int64_t n = x.dim(0), d = x.dim(1);
  std::vector<float> w(static_cast<size_t>(d));
  load_row_f32(weight.reshaped({1, d}), 0, w.data());
  const float* xs = x.data_as<const float>();
  const float* dys = dy.data_as<const float>();
  float* dxs = dx.data_as<float>();
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xr = xs + t * d;
      const float* gr = dys + t * d;
      double sum_squares = 0, dot = 0;
      for (int64_t i = 0; i < d; ++i) {
        sum_squares += double(xr[i]) * xr[i];
        dot += double(w[size_t(i)]) * gr[i] * xr[i];
      }
      const double r = 1.0 / std::sqrt(sum_squares / double(d) + double(eps));
      const double coef = r * r * r * dot / double(d);
      for (int64_t i = 0; i < d; ++i) {
        dxs[t * d + i] = float(r * w[size_t(i)] * gr[i] - coef * xr[i]);
      }
    }
  });
}

void rope_backward(ThreadPool& pool, Tensor& grad, const Tensor& positions,
                   const Tensor& inv_freq) {
  const int64_t n = grad.dim(0), heads = grad.dim(1), head_dim = grad.dim(2), half = head_dim / 2;
  const float* freq = inv_freq.data_as<const float>();
  const int32_t* pos = positions.data_as<const int32_t>();
  float* g = grad.data_as<float>();
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t j = 0; j < half; ++j) {
        const float angle = float(pos[t]) * freq[j];
        const float c = float(std::cos(double(angle))), s = float(std::sin(double(angle)));
        for (int64_t h = 0; h < heads; ++h) {
          float* v = g + (t * heads + h) * head_dim;
          const float a = v[j], b = v[j + half];
          v[j] = a * c + b * s;
          v[j + half] = b * c - a * s;
        }
      }
    }
  });
}

void attention_backward(ThreadPool& pool, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& d_out, Tensor& dq, Tensor& dk, Tensor& dv) {
  const int64_t n = q.dim(0), n_heads = q.dim(1), head_dim = q.dim(2), n_kv = k.dim(1);
  const int64_t group = n_heads / n_kv;
  const float scale = float(1.0 / std::sqrt(double(head_dim)));
  const float* qs = q.data_as<const float>();
  const float* ks = k.data_as<const float>();
  const float* vs = v.data_as<const float>();
  const float* dos = d_out.data_as<const float>();
  std::fill_n(dq.data_as<float>(), dq.numel(), 0.0f);
  std::fill_n(dk.data_as<float>(), dk.numel(), 0.0f);
  std::fill_n(dv.data_as<float>(), dv.numel(), 0.0f);
  // One kv head per task, so dk/dv of that head are written by one thread only.
  pool.parallel_for(n_kv, [&](int64_t begin, int64_t end) {
    std::vector<float> p(static_cast<size_t>(n)), dp(static_cast<size_t>(n));
    for (int64_t kvh = begin; kvh < end; ++kvh) {
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        for (int64_t t = 0; t < n; ++t) {
          const float* qv = qs + (t * n_heads + h) * head_dim;
          const float* go = dos + (t * n_heads + h) * head_dim;
          float max_score = -INFINITY;
          for (int64_t s = 0; s <= t; ++s) {
            p[size_t(s)] = dot_f32(qv, ks + (s * n_kv + kvh) * head_dim, head_dim) * scale;
            max_score = std::max(max_score, p[size_t(s)]);
          }
          double sum = 0;
          for (int64_t s = 0; s <= t; ++s)
            sum += p[size_t(s)] = std::exp(p[size_t(s)] - max_score);
          double p_dot_dp = 0;
          for (int64_t s = 0; s <= t; ++s) {
            p[size_t(s)] = float(p[size_t(s)] / sum);
            dp[size_t(s)] = dot_f32(go, vs + (s * n_kv + kvh) * head_dim, head_dim);
            p_dot_dp += double(p[size_t(s)]) * dp[size_t(s)];
          }
          float* dqv = dq.data_as<float>() + (t * n_heads + h) * head_dim;
          for (int64_t s = 0; s <= t; ++s) {
            const float ds = p[size_t(s)] * (dp[size_t(s)] - float(p_dot_dp)) * scale;
            float* dkv = dk.data_as<float>() + (s * n_kv + kvh) * head_dim;
            float* dvv = dv.data_as<float>() + (s * n_kv + kvh) * head_dim;
            const float* kv = ks + (s * n_kv + kvh) * head_dim;
            for (int64_t i = 0; i < head_dim; ++i) {
              dqv[i] += ds * kv[i];
              dkv[i] += ds * qv[i];
              dvv[i] += p[size_t(s)] * go[i];
            }
          }
        }
      }
    }
  });
}

void swiglu_backward(ThreadPool& pool, const Tensor& gate, const Tensor& up, const Tensor& ds,
                     Tensor& d_gate, Tensor& d_up) {
  const float* g = gate.data_as<const float>();
  const float* u = up.data_as<const float>();
  const float* d = ds.data_as<const float>();
  float* dg = d_gate.data_as<float>();
  float* du = d_up.data_as<float>();
  pool.parallel_for(
      gate.numel(),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const float sig = 1.0f / (1.0f + std::exp(-g[i]));
          const float silu = g[i] * sig;
          du[i] = d[i] * silu;
          dg[i] = d[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
        }
      },
      4096);
}

void linear_backward_input(ThreadPool& pool, const Tensor& dy, const LinearWeight& w, Tensor& dx,
                           bool accumulate) {
  const int64_t n = dy.dim(0), out = w.out_features(), in = w.in_features();
  const float* g = dy.data_as<const float>();
  float* d = dx.data_as<float>();
  if (!accumulate) std::fill_n(d, dx.numel(), 0.0f);
  // Each thread owns a band of input columns; weight rows are widened four at a time.
  constexpr int64_t kRows = 4;
  pool.parallel_for(
      in,
      [&](int64_t col_begin, int64_t col_end) {
        std::vector<float> rows(static_cast<size_t>(kRows * in));
        for (int64_t j0 = 0; j0 < out; j0 += kRows) {
          const int64_t count = std::min(kRows, out - j0);
          if (w.nf4) {
            nf4::dequantize_rows(*w.nf4, j0, count, rows.data());
          } else {
            for (int64_t r = 0; r < count; ++r)
              load_row_f32(w.weight, j0 + r, &rows[size_t(r * in)]);
          }
          for (int64_t t = 0; t < n; ++t) {
            float* dxt = d + t * in;
            for (int64_t r = 0; r < count; ++r) {
              const float coef = g[t * out + j0 + r];
              const float* wr = &rows[size_t(r * in)];
              for (int64_t i = col_begin; i < col_end; ++i)
                dxt[i] += coef * wr[i];
            }
          }
        }
      },
      64);
}

namespace {

// One output row of a LoRA product: row = alpha * sum_k coef[k * coef_stride] * b[k] (+ row with
// update.accumulate), b's rows [count, q] summed in f32 in order; `sum` is [q] scratch.
void product_row(float* row, const float* coef, int64_t coef_stride, const float* b, int64_t count,
                 int64_t q, const GemmUpdate& update, std::vector<float>& sum) {
  std::fill(sum.begin(), sum.end(), 0.0f);
  for (int64_t k = 0; k < count; ++k) {
    const float c = coef[k * coef_stride];
    const float* br = b + k * q;
    for (int64_t j = 0; j < q; ++j)
      sum[size_t(j)] += c * br[j];
  }
  for (int64_t j = 0; j < q; ++j)
    row[j] = update.alpha * sum[size_t(j)] + (update.accumulate ? row[j] : 0.0f);
}

}  // namespace

void matmul_tn(ThreadPool& pool, const Tensor& a, const Tensor& b, Tensor& c,
               const GemmUpdate& update) {
  const int64_t n = a.dim(0), p = a.dim(1), q = b.dim(1);
  const float* as = a.data_as<const float>();
  const float* bs = b.data_as<const float>();
  float* cs = c.data_as<float>();
  pool.parallel_for(p, [&](int64_t begin, int64_t end) {
    std::vector<float> sum(static_cast<size_t>(q));
    for (int64_t i = begin; i < end; ++i)
      product_row(cs + i * q, as + i, p, bs, n, q, update, sum);  // column i of a
  });
}

void matmul_nn(ThreadPool& pool, const Tensor& a, const Tensor& b, Tensor& c,
               const GemmUpdate& update) {
  const int64_t n = a.dim(0), p = a.dim(1), q = b.dim(1);
  const float* as = a.data_as<const float>();
  const float* bs = b.data_as<const float>();
  float* cs = c.data_as<float>();
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    std::vector<float> sum(static_cast<size_t>(q));
    for (int64_t t = begin; t < end; ++t)
      product_row(cs + t * q, as + t * p, 1, bs, p, q, update, sum);  // row t of a
  });
}

void matmul_nt(ThreadPool& pool, const Tensor& a, const Tensor& b, Tensor& c,
               const GemmUpdate& update) {
  const int64_t n = a.dim(0), p = a.dim(1), q = b.dim(0);
  const float* as = a.data_as<const float>();
  const float* bs = b.data_as<const float>();
  float* cs = c.data_as<float>();
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* ar = as + t * p;
      float* row = cs + t * q;
      for (int64_t j = 0; j < q; ++j) {  // the reference linear's dot product
        const float sum = dot_f32(ar, bs + j * p, p);
        row[j] = update.alpha * sum + (update.accumulate ? row[j] : 0.0f);
      }
    }
  });
}

}  // namespace llamaq::cpu
