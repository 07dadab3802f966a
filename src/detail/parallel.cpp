#include "detail/parallel.hpp"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>

namespace imcap::detail {

void split_rows(int64_t n, const std::function<void(int64_t, int64_t)>& f) {
  const int64_t parts = std::min<int64_t>(at::get_num_threads(), n);
  if (parts <= 1) {
    f(0, n);
    return;
  }
  const at::ThreadLocalState state;
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard guard(state);
    for (int64_t p = begin; p < end; ++p) f(n * p / parts, n * (p + 1) / parts);
  });
}

}  // namespace imcap::detail
