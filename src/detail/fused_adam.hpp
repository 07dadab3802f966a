// Adam with the update done in one pass over each parameter (internal).
#pragma once

#include <torch/torch.h>

#include <utility>
#include <vector>

namespace imcap::detail {

/// torch::optim::Adam whose step() updates each parameter and its two moment buffers in one pass,
/// split between Torch's threads, instead of about eight elementwise tensor operations with two
/// or three full-size temporaries (square root, division, weight decay). Tensor versions are
/// bumped as Adam's in-place operations would. The equations, the state (AdamParamState) and
/// the serialized form are Adam's: a checkpoint saved by either loads into the other. The result
/// equals Adam's up to float rounding (ATen fuses some multiply-adds; this pass does not).
///
/// Only float32 contiguous CPU parameters and gradients without amsgrad take the fused path; if
/// any parameter does not, the whole step is Adam's own.
class FusedAdam : public torch::optim::Adam {
 public:
  FusedAdam(const std::vector<torch::Tensor>& params, const torch::optim::AdamOptions& options)
      : torch::optim::Adam(params, options) {}
  FusedAdam(std::vector<torch::optim::OptimizerParamGroup> groups,
            const torch::optim::AdamOptions& defaults)
      : torch::optim::Adam(std::move(groups), defaults) {}

  torch::Tensor step(LossClosure closure = nullptr) override;

 private:
  bool fusable() const;
};

}  // namespace imcap::detail
