// Which of imcap's SIMD kernels this CPU runs (internal). Kernels compiled with
// __attribute__((target("avx2,fma"))) sit behind `#ifdef IMCAP_X86_KERNELS` and run where
// have_avx2_fma() says so; the baseline build runs elsewhere.
#pragma once

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define IMCAP_X86_KERNELS 1
#endif

namespace imcap::detail {

/// Whether the CPU (and the OS) runs AVX2 and FMA; false off x86.
inline bool have_avx2_fma() {
#ifdef IMCAP_X86_KERNELS
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

}  // namespace imcap::detail
