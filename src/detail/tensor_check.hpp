// Argument checks on tensors, shared by the modules (private).
#pragma once

#include <torch/types.h>

#include <cmath>
#include <sstream>
#include <string>

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

}  // namespace imcap::detail
