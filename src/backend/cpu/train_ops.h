// CPU reference ops for the trainer beyond the backward ops of backward.h: element-wise helpers,
// LoRA dropout masks, the cross-entropy over the vocabulary and the AdamW update. Plain fp32
// loops with double accumulation where a sum spans many elements.
#pragma once

#include <span>

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace llamaq::cpu {

void scale(const Tensor& x, float s, Tensor& out);             // out = s * x
void multiply(const Tensor& x, const Tensor& y, Tensor& out);  // out = x * y
void zero(Tensor& x);
void dropout_mask(uint64_t base, uint64_t threshold, float keep_scale, Tensor& mask);
void cross_entropy(ThreadPool& pool, Tensor& logits, const Tensor& targets, double normalizer,
                   Tensor& losses);
double sum_of_squares(std::span<const Tensor> xs);
void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                const AdamWUpdate& u);

}  // namespace llamaq::cpu
