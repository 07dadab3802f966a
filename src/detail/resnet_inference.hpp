// The inference engine behind ResNetImpl::forward_features (internal): every batch norm folded
// into its convolution, the folded weights kept in the compute type and, on the CPU,
// pre-arranged for oneDNN; on a GPU channels_last, with cuDNN's fused convolution + ReLU where a
// probe shows it works. The same function as the modules' forward in eval mode, faster.
#pragma once

#include <torch/types.h>

#include <array>
#include <memory>
#include <mutex>

#include "imcap/encoder.hpp"

namespace imcap::detail {

class ResNetInference {
 public:
  ResNetInference();
  ~ResNetInference();

  /// The last stage's map of `images` computed by `resnet` with folded batch norms in `dtype`
  /// (kFloat, kBFloat16 or kHalf; throws InvalidArgument for another); the result has the
  /// images' type. The caller has checked that the function is the same: no batch norm in
  /// training mode, nothing that needs a gradient. The folded weights for a dtype are built on
  /// first use and again whenever a parameter or buffer of `resnet` changed (tensor identity,
  /// storage and version counter). Thread-safe.
  torch::Tensor forward(const ResNetImpl& resnet, const torch::Tensor& images, torch::Dtype dtype);
  /// Whether the weights folded for `dtype` run cuDNN's fused convolutions (false before the
  /// first forward in that type, and always on the CPU).
  bool fused(torch::Dtype dtype) const;
  /// Drops every folded copy (the memory comes back; the next forward rebuilds).
  void clear();

 private:
  struct Plan;
  mutable std::mutex mutex_;
  // One plan per compute type: float32, bfloat16, float16.
  std::array<std::shared_ptr<const Plan>, 3> plans_;
};

}  // namespace imcap::detail
