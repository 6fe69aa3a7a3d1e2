// The CPU backend at a chosen instruction-set level: Isa::Reference runs the fp32 reference ops
// (cpu_ops.h) with an f32 KV cache, every other level the fast path (int8 NF4 and SIMD bf16
// linear, tiled attention, bf16 KV cache). make_cpu_backend(n) in backend.h takes best_isa().
#pragma once

#include <memory>
#include <optional>

#include "backend/backend.h"
#include "backend/cpu/isa.h"

namespace llamaq {

// kv_dtype: the KV cache's dtype (f32, bf16 or f16); by default f32 for Isa::Reference, bf16 for
// the fast levels.
std::unique_ptr<Backend> make_cpu_backend(int n_threads, cpu::Isa isa,
                                          std::optional<DType> kv_dtype = std::nullopt);

}  // namespace llamaq
