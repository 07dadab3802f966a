// CPU thread settings for a program of your own: Torch's pool and OpenBLAS's beside it, set the
// way the `imcap` program sets them (docs/performance.md#threads).
#pragma once

namespace imcap {

/// The thread counts that imcap's CPU work runs under.
struct CpuThreads {
  int torch = 1;  ///< Torch's intra-op threads (torch::get_num_threads())
  int blas = 0;   ///< OpenBLAS's own threads; 0 when this LibTorch does not use OpenBLAS
};

/// The most threads set_cpu_threads accepts for either pool.
inline constexpr int kMaxCpuThreads = 1024;

/// Sets what the `imcap` program starts with: `threads` Torch threads (0: one per core) and
/// OpenBLAS's own pool at `blas_threads`, where this LibTorch uses OpenBLAS (Debian's does).
/// With 1, the default, OpenBLAS runs inside Torch's threads instead of starting as many again
/// beside them: on 2 cores greedy decoding took 24 ms with 2 and 1, and 58 ms with 1 Torch and
/// 2 OpenBLAS threads, what Debian's LibTorch starts with there. imcap never changes these by
/// itself; call this once, before the first caption, from one thread. Returns the counts now in
/// effect. Throws InvalidArgument when `threads` is outside 0..kMaxCpuThreads or `blas_threads`
/// outside 1..kMaxCpuThreads.
CpuThreads set_cpu_threads(int threads = 0, int blas_threads = 1);

/// The counts in effect now.
CpuThreads cpu_threads();

}  // namespace imcap
