#include "cli/blas_core.hpp"

#include "detail/cpu_features.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace imcap::cli {

std::string blas_core() {
  using GetString = char* (*)();
  auto* corename = reinterpret_cast<GetString>(::dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (corename == nullptr) return {};
  const char* name = corename();
  return name != nullptr ? std::string(name) : std::string();
}

std::string fitting_blas_core() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return {};
  const std::string core = blas_core();
  // OpenBLAS names its cores in any case ("Prescott", "prescott") depending on the version.
  if (core != "Prescott" && core != "prescott") return {};
  if (!detail::have_avx2_fma()) return {};
#ifdef IMCAP_X86_KERNELS
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
#endif
  return "Haswell";
}

void restart_with_fitting_blas_core(char** argv) {
  const std::string core = fitting_blas_core();
  if (core.empty()) return;
  if (::setenv("OPENBLAS_CORETYPE", core.c_str(), /*overwrite=*/1) != 0) return;
  ::execv("/proc/self/exe", argv);
  ::unsetenv("OPENBLAS_CORETYPE");  // execv failed: go on as before
}

}  // namespace imcap::cli
