// Argument checks on tensors, shared by the modules (private).
#pragma once

#include <torch/types.h>

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

}  // namespace imcap::detail
