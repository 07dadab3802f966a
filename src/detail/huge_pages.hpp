// Transparent huge pages for weights that are streamed at every decoding step (internal).
#pragma once

#include <torch/types.h>

#include <cstddef>
#include <cstdint>

namespace imcap::detail {

/// Decoding steps with the same weights after which the decoder gives them huge pages: the
/// collapse costs 10 to 40 ms for the benchmark's 27 MB, and saves about 0.5 ms a step.
constexpr int64_t kStepsBeforeHugePages = 100;

/// Asks Linux to back the whole 2 MiB pages inside [data, data + bytes) with transparent huge
/// pages, now (MADV_COLLAPSE, synchronous: about 10 to 40 ms for 27 MB) and for later faults
/// (MADV_HUGEPAGE). A decoding step reads 27 MB of weights once each: with 4 KiB pages that is
/// 6,600 TLB misses, each a page walk, and in a virtual machine a two-level one. The contents
/// do not change.
/// Returns the bytes now backed by huge pages. It is 0 off Linux, when transparent huge pages
/// are `never` or not 2 MiB, or for memory the kernel will not collapse. Before Linux 6.1 (no
/// MADV_COLLAPSE) it is also 0, but the hint stays, and khugepaged may collapse the range later.
std::size_t advise_huge_pages(const void* data, std::size_t bytes);

/// The same for the storage of a CPU tensor (0 for other devices).
std::size_t advise_huge_pages(const torch::Tensor& tensor);

/// Whether huge pages can be had here: a fresh buffer collapses (cached after the first call).
bool huge_pages_available();

}  // namespace imcap::detail
