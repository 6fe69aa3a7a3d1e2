// Instruction-set levels of the CPU fast kernels, chosen at run time from the CPU's features so
// one binary runs on any x86-64 (and elsewhere with the portable level).
#pragma once

#include <string_view>
#include <vector>

namespace llamaq::cpu {

enum class Isa {
  Reference,  // the fp32 reference ops (cpu_ops.h): the spec, no approximation
  Portable,   // the fast path's algorithms (int8 NF4 dot products) in plain C++
  Avx2,       // AVX2 + FMA + F16C
  Avx512,     // AVX-512 F/BW/VL/DQ + VNNI + VBMI (Ice Lake, Sapphire Rapids, Zen 4 and newer)
};

std::string_view isa_name(Isa isa);
// "reference", "portable", "avx2", "avx512"; anything else is an Error naming the value.
Isa parse_isa(std::string_view name);
bool isa_supported(Isa isa);
// The fastest supported level, or the one named by LLAMAQ_CPU_ISA when that is set.
Isa best_isa();
// Every level this CPU runs, Reference first.
std::vector<Isa> supported_isas();

}  // namespace llamaq::cpu
