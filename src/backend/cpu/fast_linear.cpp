#include "backend/cpu/fast_linear.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#include "quant/nf4_codec.h"

namespace llamaq::cpu {
namespace {

// Rows handed to one kernel call: their chunk scales (rows x in/64 floats) stay in L1. The rows
// are claimed by the threads in guided chunks of these blocks (ThreadPool::parallel_for_guided):
// long contiguous runs, because a core streams its rows at full speed only once its prefetches
// run ahead (claims of 16 rows: 23 decode tokens/s on the 1B shape, 2 threads; claims of an
// eighth of the rows: 34-39).
constexpr int64_t kRowBlock = 16;

// dw [n_rows, cols / 64]: the scale of every 64-chunk of rows [row_begin, +n_rows), decoded as
// nf4::dequantize_rows does. Runs once per 64 weights of every decode step, so: from the fp16
// scales decoded at upload where the weight has them (a nested-table lookup per block took a fifth
// of the decode time of the 1B shape), else with no division per chunk, and for 64-weight blocks
// a branch-free loop per nested block.
void chunk_scales(const KernelTable& kernels, const LinearWeight& weight, int64_t row_begin,
                  int64_t n_rows, float* dw) {
  const nf4::Nf4Weight& w = *weight.nf4;
  const int64_t total = n_rows * (w.cols / kChunk);
  const int64_t first_block = row_begin * w.cols / w.block_size;
  if (weight.half_scales && w.block_size == kChunk) {
    const nf4::HalfScales& half = *weight.half_scales;
    kernels.widen_scales(half.half.data_as<const uint16_t>() + first_block, total, half.unscale,
                         dw);
    return;
  }
  const float* plain = w.double_quant ? nullptr : w.absmax.data_as<const float>();
  if (w.block_size == kChunk && plain) {
    std::copy_n(plain + first_block, total, dw);
    return;
  }
  const uint8_t* codes = w.double_quant ? w.absmax.data_as<const uint8_t>() : nullptr;
  const float* nested_absmax = w.double_quant ? w.nested_absmax.data_as<const float>() : nullptr;
  const float* nested_map = w.double_quant ? w.nested_map.data_as<const float>() : nullptr;
  const auto scale_of = [&](int64_t block) {
    if (plain) return plain[block];
    const float product = nested_map[codes[block]] * nested_absmax[block / w.nested_block_size];
    return product + w.nested_offset;
  };
  if (w.block_size == kChunk) {
    for (int64_t i = 0; i < total;) {
      const int64_t block = first_block + i;
      const int64_t run = std::min(total - i, w.nested_block_size - block % w.nested_block_size);
      const float nested = nested_absmax[block / w.nested_block_size];
      for (int64_t j = 0; j < run; ++j)
        dw[i + j] = nested_map[codes[block + j]] * nested + w.nested_offset;
      i += run;
    }
    return;
  }
  const int64_t chunks_per_block = w.block_size / kChunk;
  int64_t block = first_block;
  int64_t chunk_in_block = (row_begin * w.cols % w.block_size) / kChunk;
  float scale = scale_of(block);
  for (int64_t i = 0; i < total; ++i) {
    dw[i] = scale;
    if (++chunk_in_block == chunks_per_block && i + 1 < total) {
      chunk_in_block = 0;
      scale = scale_of(++block);
    }
  }
}

// Asks for the fp16 block scales of rows [row_begin, +n_rows) while the kernel runs on the rows
// before them: they are a stream apart from the weights, and each row block would otherwise
// start by waiting for them.
void prefetch_half_scales(const LinearWeight& weight, int64_t row_begin, int64_t n_rows) {
  const nf4::Nf4Weight& w = *weight.nf4;
  const auto* bytes = static_cast<const char*>(weight.half_scales->half.data());
  const int64_t first = row_begin * w.cols / w.block_size * 2;
  const int64_t last = (row_begin + n_rows) * w.cols / w.block_size * 2;
  for (int64_t offset = first / 64 * 64; offset < last; offset += 64)
    __builtin_prefetch(bytes + offset);
}

// One token's row in the layout of Q8Activations: per 64-chunk q = round(127 x / max|x|), and
// the scale max|x| / 127 times the weights' 1 / 127 (so the kernels multiply by the raw block
// scale). q, scale and bias are one pair block of the row (the B half left zero when absent).
constexpr float kScaleOfBoth = 1.0f / (127.0f * 127.0f);

void quantize_chunk(const float* x, int8_t* even, int8_t* odd, float* scale, int32_t* bias) {
  float amax = 0;
  for (int64_t i = 0; i < kChunk; ++i)
    amax = std::max(amax, std::fabs(x[i]));
  const float inv = amax > 0 ? 127.0f / amax : 0.0f;
  for (int64_t j = 0; j < kChunk / 2; ++j) {
    even[j] = int8_t(std::nearbyint(x[2 * j] * inv));
    odd[j] = int8_t(std::nearbyint(x[2 * j + 1] * inv));
  }
  for (int lane = 0; lane < 8; ++lane) {
    int32_t sum = 0;
    for (int k = 0; k < 4; ++k)
      sum += even[4 * lane + k] + odd[4 * lane + k];
    scale[lane] = amax * kScaleOfBoth;
    bias[lane] = -128 * sum;
  }
}

void quantize_row(const float* x, int64_t cols, int8_t* q, float* scale, int32_t* bias) {
  const int64_t chunks = cols / kChunk;
  for (int64_t p = 0; p < (chunks + 1) / 2; ++p) {
    int8_t* block = q + p * kPair;
    for (int64_t h = 0; h < 2; ++h) {
      int8_t* even = block + h * 32;
      float* lane_scale = scale + p * kPairLanes + h * 8;
      int32_t* lane_bias = bias + p * kPairLanes + h * 8;
      if (2 * p + h < chunks) {
        quantize_chunk(x + (2 * p + h) * kChunk, even, even + kChunk, lane_scale, lane_bias);
      } else {
        std::fill_n(even, 32, int8_t(0));
        std::fill_n(even + kChunk, 32, int8_t(0));
        std::fill_n(lane_scale, 8, 0.0f);
        std::fill_n(lane_bias, 8, 0);
      }
    }
  }
}

// Tokens per kernel call: their int8 values, lane scales and biases (2 bytes per input column)
// within ~256 KiB of L2, a multiple of the 4-token register tile. Every call re-reads its rows,
// which stay in L1/L2 (16 rows of 14336 columns: 115 KiB).
int64_t tokens_per_block(const Q8Activations& x) {
  const int64_t bytes_per_token = x.pairs * (kPair + 2 * kPairLanes * 4);
  return std::max<int64_t>(4, (256 << 10) / bytes_per_token / 4 * 4);
}

struct Nf4Job {
  const KernelTable& kernels;
  const LinearWeight& weight;
  const nf4::Nf4Weight& w;
  const Q8Activations& x;
  const int8_t* codes;
  float* out;
};

void nf4_band(const Nf4Job& job, int64_t begin, int64_t end) {
  thread_local std::vector<float> dw;
  const int64_t chunks = job.w.cols / kChunk;
  dw.resize(size_t(kRowBlock * chunks));
  for (int64_t r0 = begin; r0 < end; r0 += kRowBlock) {
    const int64_t n_rows = std::min(kRowBlock, end - r0);
    chunk_scales(job.kernels, job.weight, r0, n_rows, dw.data());
    if (job.weight.half_scales)
      prefetch_half_scales(job.weight, r0 + n_rows, std::min(kRowBlock, end - r0 - n_rows));
    Nf4Rows rows;
    rows.packed = job.w.packed.data_as<const uint8_t>();
    rows.cols = job.w.cols;
    rows.row_begin = r0;
    rows.n_rows = n_rows;
    rows.dw = dw.data();
    rows.codes = job.codes;
    // Tokens in blocks whose activations stay in L2 while the row block's weights are reused.
    const int64_t token_block = tokens_per_block(job.x);
    for (int64_t t0 = 0; t0 < job.x.n_tokens; t0 += token_block) {
      Q8Activations part = job.x;
      part.n_tokens = std::min(token_block, job.x.n_tokens - t0);
      part.q += t0 * part.pairs * kPair;
      part.scale += t0 * part.pairs * kPairLanes;
      part.bias += t0 * part.pairs * kPairLanes;
      job.kernels.nf4(rows, part, job.out + t0 * job.w.rows, job.w.rows);
    }
  }
}

struct Bf16Job {
  const KernelTable& kernels;
  const Tensor& w;
  const float* x;
  int64_t n_tokens;
  float* out;
};

}  // namespace

bool fast_linear_applies(const LinearWeight& w) {
  if (w.nf4) {
    const nf4::Nf4Weight& q = *w.nf4;
    bool codes_in_range = true;
    for (float code : q.code_table)
      codes_in_range = codes_in_range && std::fabs(code) <= 1.0f;
    return codes_in_range && q.cols % kChunk == 0 && q.block_size % kChunk == 0 &&
           q.packed.device() == Device::Cpu;
  }
  return w.weight.dtype() == DType::BF16 && w.weight.device() == Device::Cpu &&
         w.weight.rank() == 2;
}

LinearWeight prepare_fast_linear(const LinearWeight& w) {
  if (!w.nf4 || w.half_scales || w.nf4->block_size != kChunk || !fast_linear_applies(w)) return w;
  LinearWeight out = w;
  out.half_scales = std::make_shared<const nf4::HalfScales>(nf4::half_scales(*w.nf4));
  return out;
}

void nf4_int8_codes(const nf4::Nf4Weight& w, int8_t* codes) {
  for (int i = 0; i < nf4::kCodes; ++i)
    codes[i] = int8_t(std::nearbyint(127.0f * w.code_table[size_t(i)]));
}

Q8Activations quantize_activations(ThreadPool& pool, const float* x, int64_t n, int64_t cols,
                                   LinearScratch& scratch) {
  const int64_t pairs = (cols / kChunk + 1) / 2;
  scratch.q.resize(size_t(n * pairs * kPair));
  scratch.scale.resize(size_t(n * pairs * kPairLanes));
  scratch.bias.resize(size_t(n * pairs * kPairLanes));
  struct Job {
    const float* x;
    int64_t cols, pairs;
    LinearScratch& s;
  } job{x, cols, pairs, scratch};
  pool.parallel_for(n, [&job](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      quantize_row(job.x + t * job.cols, job.cols, job.s.q.data() + t * job.pairs * kPair,
                   job.s.scale.data() + t * job.pairs * kPairLanes,
                   job.s.bias.data() + t * job.pairs * kPairLanes);
    }
  });
  return {n, cols, pairs, scratch.q.data(), scratch.scale.data(), scratch.bias.data()};
}

void fast_linear(ThreadPool& pool, const KernelTable& kernels, const Tensor& x,
                 const LinearWeight& w, Tensor& out, LinearScratch& scratch) {
  const int64_t n = x.dim(0);
  const int64_t in = w.in_features();
  const int64_t out_features = w.out_features();
  check_linear_shapes(x, w, out);
  if (!fast_linear_applies(w)) fail("cpu fast linear: this weight needs the reference linear");
  float* ys = out.data_as<float>();
  if (w.nf4) {
    const Q8Activations q = quantize_activations(pool, x.data_as<const float>(), n, in, scratch);
    int8_t codes[nf4::kCodes];
    nf4_int8_codes(*w.nf4, codes);
    const Nf4Job job{kernels, w, *w.nf4, q, codes, ys};
    pool.parallel_for_guided(out_features, kRowBlock,
                             [&job](int64_t begin, int64_t end) { nf4_band(job, begin, end); });
    return;
  }
  const Bf16Job job{kernels, w.weight, x.data_as<const float>(), n, ys};
  pool.parallel_for_guided(out_features, kRowBlock, [&job](int64_t begin, int64_t end) {
    job.kernels.bf16(job.w.data_as<const uint16_t>(), job.w.dim(1), begin, end - begin, job.x,
                     job.n_tokens, job.out, job.w.dim(0));
  });
}

bool fast_linear_group_applies(std::span<const LinearWeight* const> ws) {
  for (const LinearWeight* w : ws) {
    if (!w->nf4 || !fast_linear_applies(*w) || w->in_features() != ws[0]->in_features()) {
      return false;
    }
  }
  return !ws.empty();
}

void fast_linear_group(ThreadPool& pool, const KernelTable& kernels, const Tensor& x,
                       std::span<const LinearWeight* const> ws, std::span<Tensor* const> outs,
                       LinearScratch& scratch) {
  if (ws.size() != outs.size())
    fail("linear_group: {} weights but {} outputs", ws.size(), outs.size());
  if (!fast_linear_group_applies(ws))
    fail("cpu fast linear group: these weights need one linear each");
  for (size_t i = 0; i < ws.size(); ++i)
    check_linear_shapes(x, *ws[i], *outs[i]);
  const Q8Activations q =
      quantize_activations(pool, x.data_as<const float>(), x.dim(0), x.dim(1), scratch);
  std::vector<std::array<int8_t, nf4::kCodes>> codes(ws.size());
  std::vector<Nf4Job> jobs;
  std::vector<int64_t> first_row;  // of each weight in the concatenated rows
  int64_t rows = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    nf4_int8_codes(*ws[i]->nf4, codes[i].data());
    jobs.push_back({kernels, *ws[i], *ws[i]->nf4, q, codes[i].data(), outs[i]->data_as<float>()});
    first_row.push_back(rows);
    rows += ws[i]->out_features();
  }
  // A chunk of the concatenated rows may span weights: each weight gets its part.
  pool.parallel_for_guided(rows, kRowBlock, [&](int64_t begin, int64_t end) {
    for (size_t i = 0; i < jobs.size(); ++i) {
      const int64_t lo = std::max(begin, first_row[i]);
      const int64_t hi = std::min(end, first_row[i] + jobs[i].w.rows);
      if (lo < hi) nf4_band(jobs[i], lo - first_row[i], hi - first_row[i]);
    }
  });
}

KernelTable kernels_for(Isa isa) {
  switch (isa) {
    case Isa::Portable:
      return portable_kernels();
#if defined(__x86_64__)
    case Isa::Avx2:
      return avx2_kernels();
    case Isa::Avx512:
      return avx512_kernels();
#endif
    default:
      fail("cpu: no fast kernels for instruction set {}", isa_name(isa));
  }
}

}  // namespace llamaq::cpu
