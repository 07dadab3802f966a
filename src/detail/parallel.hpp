// Splitting work between Torch's threads (internal).
#pragma once

#include <cstdint>
#include <functional>

namespace imcap::detail {

/// Runs f(begin, end) on consecutive parts of [0, n), one per Torch thread, in parallel. Inside,
/// ATen runs single-threaded (and the CLI keeps OpenBLAS at one thread when Torch has several),
/// so each matrix product gets its own core instead of two thread pools fighting over them. The
/// workers get the caller's thread-local state (grad mode above all: at::parallel_for does not
/// carry it).
void split_rows(int64_t n, const std::function<void(int64_t, int64_t)>& f);

}  // namespace imcap::detail
