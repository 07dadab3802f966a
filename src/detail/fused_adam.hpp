// Adam with the update done in one pass over each parameter (internal).
#pragma once

#include <torch/torch.h>

#include <vector>

namespace imcap::detail {

/// torch::optim::Adam whose step() updates each parameter, its two moment buffers and its
/// gradient in one pass, split between Torch's threads, instead of six tensor operations with
/// two full-size temporaries (sqrt and division). The equations, the state (AdamParamState) and
/// the serialized form are Adam's: a checkpoint saved by either loads into the other. The result
/// equals Adam's up to float rounding (ATen fuses some multiply-adds; this pass does not).
///
/// Only float32 contiguous CPU parameters and gradients without amsgrad take the fused path; if
/// any parameter does not, the whole step is Adam's own.
class FusedAdam : public torch::optim::Adam {
 public:
  FusedAdam(const std::vector<torch::Tensor>& params, const torch::optim::AdamOptions& options)
      : torch::optim::Adam(params, options) {}

  torch::Tensor step(LossClosure closure = nullptr) override;

 private:
  bool fusable() const;
};

}  // namespace imcap::detail
