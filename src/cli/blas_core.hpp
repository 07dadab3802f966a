// OpenBLAS's kernels for CPUs newer than the OpenBLAS (internal to the CLI).
//
// OpenBLAS picks its kernels when it is loaded, from the CPU's model number. Debian 12's (0.3.21)
// does not know the Xeons that came after it (Sapphire Rapids and later) and falls back to its
// Prescott kernels (SSE3): every matrix product, hence every convolution and LSTM step, runs 2 to
// 3 times slower there than with the AVX2 or AVX-512 kernels the CPU can run. The choice can
// only be overridden before loading, by OPENBLAS_CORETYPE, so the CLI starts itself again with
// it set (docs/performance.md#openblas-kernels).
#pragma once

#include <string>

namespace imcap::cli {

/// The loaded OpenBLAS's core name (e.g. "Haswell"), or empty when the BLAS is not OpenBLAS.
std::string blas_core();

/// The OPENBLAS_CORETYPE that fits this CPU when the loaded OpenBLAS fell back to Prescott on a
/// CPU with AVX2 and FMA: "SkylakeX" with AVX-512 (F, CD, BW, DQ, VL), else "Haswell". Empty
/// when OpenBLAS recognised the CPU, is absent, or OPENBLAS_CORETYPE is already set.
std::string fitting_blas_core();

/// For the commands that compute: where fitting_blas_core() names a core, sets
/// OPENBLAS_CORETYPE to it and replaces the process by a new run of the same program with the
/// same arguments (execv of /proc/self/exe). Returns when there is nothing to do or the new run
/// could not start (then the process goes on with the Prescott kernels).
void restart_with_fitting_blas_core(char** argv);

}  // namespace imcap::cli
