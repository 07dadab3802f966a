// CPU thread settings (imcap/threads.hpp).
#include "imcap/threads.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <thread>

#include <fmt/format.h>
#include <torch/torch.h>

#include "imcap/error.hpp"

namespace imcap {

namespace {

// OpenBLAS's entry points, looked up at run time: LibTorch may be built without OpenBLAS, and
// imcap does not link it itself.
template <typename F>
F openblas(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_DEFAULT, name));
}

}  // namespace

CpuThreads set_cpu_threads(int threads, int blas_threads) {
  if (threads < 0 || threads > kMaxCpuThreads)
    throw InvalidArgument(fmt::format(
        "set_cpu_threads: threads = {}: expected 0 (one per core) to {}", threads, kMaxCpuThreads));
  if (blas_threads < 1 || blas_threads > kMaxCpuThreads)
    throw InvalidArgument(fmt::format("set_cpu_threads: blas_threads = {}: expected 1 to {}",
                                      blas_threads, kMaxCpuThreads));
  if (threads == 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(threads);
  // Debian's LibTorch calls OpenBLAS, which starts its own pool of one thread per core. With
  // Torch's threads on top the two pools fight over the cores: training the demo's model ran at
  // 109 captions/s with both at 2 threads and at 214 with OpenBLAS at 1 (2 cores,
  // docs/performance.md#threads).
  if (auto* set = openblas<void (*)(int)>("openblas_set_num_threads")) set(blas_threads);
  return cpu_threads();
}

CpuThreads cpu_threads() {
  CpuThreads t;
  t.torch = torch::get_num_threads();
  if (auto* get = openblas<int (*)()>("openblas_get_num_threads")) t.blas = get();
  return t;
}

}  // namespace imcap
