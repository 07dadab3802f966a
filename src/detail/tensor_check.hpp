// Argument checks on tensors, shared by the modules (private).
#pragma once

#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "imcap/error.hpp"

namespace imcap::detail {

/// "[2, 3, 224, 224]", or "undefined".
inline std::string shape_string(const torch::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

/// Throws InvalidArgument("<what>: expected <expected>, got shape <shape> <dtype>") unless ok.
inline void check_tensor(bool ok, const std::string& what, const std::string& expected,
                         const torch::Tensor& t) {
  if (ok) return;
  std::ostringstream s;
  s << what << ": expected " << expected << ", got shape " << shape_string(t);
  if (t.defined()) s << ' ' << t.scalar_type();
  throw InvalidArgument(s.str());
}

/// The smallest and largest value of an integer tensor, with one wait for the device on a GPU.
inline std::pair<std::int64_t, std::int64_t> min_max(const torch::Tensor& t) {
  if (t.device().is_cpu()) return {t.min().item<std::int64_t>(), t.max().item<std::int64_t>()};
  const torch::Tensor both = torch::stack({t.min(), t.max()}).to(torch::kCPU, torch::kLong);
  return {both[0].item<std::int64_t>(), both[1].item<std::int64_t>()};
}

/// Checks caption lengths: integer, shape [batch], values in [min_len, max_len] (max_len: the
/// caption width).
inline void check_lengths(const torch::Tensor& lengths, std::int64_t batch, std::int64_t max_len,
                          std::int64_t min_len = 1) {
  check_tensor(lengths.defined() && lengths.dim() == 1 && lengths.size(0) == batch &&
                   !lengths.is_floating_point() && !lengths.is_complex(),
               "caption lengths", fmt::format("integer lengths of shape [{}]", batch), lengths);
  if (batch == 0) return;
  const auto [lo, hi] = min_max(lengths);
  if (lo < min_len || hi > max_len) {
    throw InvalidArgument(fmt::format(
        "caption lengths: expected values in [{}, {}] (the caption width), got min {} and max {}",
        min_len, max_len, lo, hi));
  }
}

/// Checks that every id lies in [0, vocab_size).
inline void check_ids(const torch::Tensor& ids, std::int64_t vocab_size, const char* what) {
  if (ids.numel() == 0) return;
  const auto [lo, hi] = min_max(ids);
  if (lo < 0 || hi >= vocab_size) {
    throw InvalidArgument(
        fmt::format("{}: expected ids in [0, {}) (the vocabulary), got min {} and max {}", what,
                    vocab_size, lo, hi));
  }
}

/// Where the first NaN or infinity of a [N, C] float32 tensor lies: its row and column, or
/// {-1, -1} when every value is finite. One pass over the values.
struct NonFinite {
  std::int64_t row = -1, column = -1;
  float value = 0;
};
inline NonFinite find_non_finite(const torch::Tensor& t) {
  const auto cpu = t.to(torch::kCPU, torch::kFloat32).contiguous();
  const float* p = cpu.data_ptr<float>();
  const std::int64_t columns = cpu.size(1);
  const std::int64_t n = cpu.numel();
  for (std::int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(p[i])) return {i / columns, i % columns, p[i]};
  }
  return {};
}

// The first row (index along dim 0) of a floating-point tensor that holds a NaN or an
// infinity, or -1. Checked in chunks of rows, so that a large 16-bit grid is never copied whole.
inline std::int64_t first_non_finite_row(const torch::Tensor& t) {
  const std::int64_t rows = t.size(0), chunk = 256;
  for (std::int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const torch::Tensor part = t.narrow(0, r0, std::min(chunk, rows - r0));
    const torch::Tensor ok = at::isfinite(part).reshape({part.size(0), -1}).all(1);
    if (!ok.all().item<bool>()) return r0 + (~ok).nonzero()[0][0].item<std::int64_t>();
  }
  return -1;
}

}  // namespace imcap::detail
