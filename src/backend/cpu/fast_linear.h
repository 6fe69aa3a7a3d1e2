// The fast CPU linear: NF4 weights through int8 dot products, bf16 weights in fp32 with SIMD
// (kernels.h), rows partitioned across the thread pool. Weights are used where they lie (the
// memory-mapped checkpoint or the quantized tensors): nothing is copied or repacked.
#pragma once

#include <span>
#include <vector>

#include "backend/cpu/kernels.h"
#include "core/thread_pool.h"
#include "model/linear_weight.h"

namespace llamaq::cpu {

// Buffers of the quantized activations, kept between calls so that a warm token loop does not
// allocate.
struct LinearScratch {
  std::vector<int8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> bias;
};

// True when the fast kernels take this weight (NF4 with in_features a multiple of 64 and a block
// size that is a multiple of 64, or dense bf16); other weights go to the reference linear.
bool fast_linear_applies(const LinearWeight& w);

// The weight as the fast kernels read it fastest: for NF4 in 64-weight blocks, the block scales
// decoded once to fp16 (LinearWeight::half_scales). The packed weights are shared, not copied.
LinearWeight prepare_fast_linear(const LinearWeight& w);

// int8 of one weight code: round(127 * code), the code book being within [-1, 1].
void nf4_int8_codes(const nf4::Nf4Weight& w, int8_t* codes);  // codes: [16]

// Quantizes x [n, cols] f32 into `scratch` and returns the view the kernels read.
Q8Activations quantize_activations(ThreadPool& pool, const float* x, int64_t n, int64_t cols,
                                   LinearScratch& scratch);

// out = x w^T like cpu::linear, with `kernels`; w must satisfy fast_linear_applies.
void fast_linear(ThreadPool& pool, const KernelTable& kernels, const Tensor& x,  // [n, in] f32
                 const LinearWeight& w,                                          // [out, in]
                 Tensor& out,                                                    // [n, out] f32
                 LinearScratch& scratch);

// outs[i] = x ws[i]^T for NF4 weights that share their input (q, k and v): x is quantized once
// and the rows of all the weights run in one pool loop, so that the small projections share one
// dispatch and one ramp-up instead of one each. Every weight must satisfy fast_linear_applies and
// be NF4 (group_applies).
bool fast_linear_group_applies(std::span<const LinearWeight* const> ws);
void fast_linear_group(ThreadPool& pool, const KernelTable& kernels,
                       const Tensor& x,                          // [n, in] f32
                       std::span<const LinearWeight* const> ws,  // each [out_i, in] NF4
                       std::span<Tensor* const> outs,            // each [n, out_i] f32
                       LinearScratch& scratch);

}  // namespace llamaq::cpu
