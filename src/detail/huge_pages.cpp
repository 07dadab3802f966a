#include "detail/huge_pages.hpp"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#ifdef __linux__
#include <sys/mman.h>
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25  // Linux 6.1; glibc before 2.37 does not name it
#endif
#endif

namespace imcap::detail {
namespace {

#ifdef __linux__
// The PMD huge page size, or 0: when the administrator disallows transparent huge pages, or
// when they are not 2 MiB (with 16 or 64 KiB base pages they are 32 or 512 MiB, more than the
// weights).
std::size_t huge_page_size() {
  static const std::size_t size = [] {
    std::ifstream enabled("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string line;
    if (!enabled || !std::getline(enabled, line) || line.find("[never]") != std::string::npos)
      return std::size_t{0};
    std::ifstream pmd("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
    std::size_t bytes = 0;
    if (!(pmd >> bytes)) bytes = std::size_t{2} << 20;
    return bytes == std::size_t{2} << 20 ? bytes : std::size_t{0};
  }();
  return size;
}
#endif

}  // namespace

std::size_t advise_huge_pages(const void* data, std::size_t bytes) {
#ifdef __linux__
  const std::size_t page = huge_page_size();
  if (page == 0 || data == nullptr) return 0;
  const auto begin = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t first = (begin + page - 1) & ~(page - 1);
  const std::uintptr_t last = (begin + bytes) & ~(page - 1);
  if (bytes < page || last <= first) return 0;
  void* start = reinterpret_cast<void*>(first);
  const std::size_t length = last - first;
  // The first is a hint for later faults (khugepaged may also collapse the range later); the
  // second collapses the pages now. Both fail harmlessly where they are not supported.
  if (madvise(start, length, MADV_HUGEPAGE) != 0) return 0;
  // EAGAIN: a page was locked or busy for a moment (another thread faulting, compaction).
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (madvise(start, length, MADV_COLLAPSE) == 0) return length;
    if (errno != EAGAIN) break;
  }
  return 0;
#else
  (void)data;
  (void)bytes;
  return 0;
#endif
}

std::size_t advise_huge_pages(const torch::Tensor& tensor) {
  if (!tensor.defined() || !tensor.device().is_cpu() || !tensor.has_storage()) return 0;
  const auto& storage = tensor.storage();
  return advise_huge_pages(storage.data_ptr().get(), storage.nbytes());
}

bool huge_pages_available() {
#ifdef __linux__
  static const bool available = [] {
    const std::size_t page = huge_page_size();
    if (page == 0) return false;
    void* raw = nullptr;
    if (posix_memalign(&raw, page, 2 * page) != 0) return false;
    const std::unique_ptr<void, decltype(&std::free)> buffer(raw, &std::free);
    auto* bytes = static_cast<unsigned char*>(raw);
    for (std::size_t i = 0; i < 2 * page; i += 4096) bytes[i] = 1;
    return advise_huge_pages(raw, 2 * page) == 2 * page;
  }();
  return available;
#else
  return false;
#endif
}

}  // namespace imcap::detail
