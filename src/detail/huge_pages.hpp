// Transparent huge pages for weights that are streamed at every decoding step (internal).
#pragma once

#include <torch/types.h>

#include <cstddef>

namespace imcap::detail {

/// Asks Linux to back the whole huge pages (2 MiB on x86-64) inside [data, data + bytes) with
/// transparent huge pages, now (MADV_COLLAPSE) and after (MADV_HUGEPAGE). A decoding step reads
/// 27 MB of weights once each: with 4 KiB pages that is 6,600 TLB misses, each a page walk, and
/// in a virtual machine a two-level one. The contents do not change.
/// Returns the bytes now backed by huge pages: 0 off Linux, when transparent huge pages are set
/// to `never`, before Linux 6.1 (no MADV_COLLAPSE), or for memory the kernel will not collapse.
std::size_t advise_huge_pages(const void* data, std::size_t bytes);

/// The same for the storage of a CPU tensor (0 for other devices).
std::size_t advise_huge_pages(const torch::Tensor& tensor);

/// Whether huge pages can be had here: a fresh buffer collapses (cached after the first call).
bool huge_pages_available();

}  // namespace imcap::detail
