#include "backend/cpu/isa.h"

#include <cstdlib>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "core/error.h"

namespace llamaq::cpu {
namespace {

#if defined(__x86_64__)
// CPUID leaf 1, ECX bit 29 (clang's __builtin_cpu_supports does not know "f16c").
bool has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
}
#endif

}  // namespace

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::Reference:
      return "reference";
    case Isa::Portable:
      return "portable";
    case Isa::Avx2:
      return "avx2";
    case Isa::Avx512:
      return "avx512";
  }
  return "?";
}

Isa parse_isa(std::string_view name) {
  for (Isa isa : {Isa::Reference, Isa::Portable, Isa::Avx2, Isa::Avx512}) {
    if (isa_name(isa) == name) return isa;
  }
  fail("unknown CPU instruction set \"{}\" (reference, portable, avx2 or avx512)", name);
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Reference:
    case Isa::Portable:
      return true;
#if defined(__x86_64__)
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
#endif
    default:
      return false;
  }
}

Isa best_isa() {
  if (const char* forced = std::getenv("LLAMAQ_CPU_ISA"); forced && *forced) {
    const Isa isa = parse_isa(forced);
    if (!isa_supported(isa)) fail("LLAMAQ_CPU_ISA={}: this CPU does not support it", forced);
    return isa;
  }
  for (Isa isa : {Isa::Avx512, Isa::Avx2}) {
    if (isa_supported(isa)) return isa;
  }
  return Isa::Portable;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Reference, Isa::Portable, Isa::Avx2, Isa::Avx512}) {
    if (isa_supported(isa)) out.push_back(isa);
  }
  return out;
}

}  // namespace llamaq::cpu
