// Adam with the update done in one pass over each parameter (internal).
#pragma once

#include <torch/torch.h>

#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace imcap::detail {

/// The key of a parameter in torch::optim::Optimizer::state(): LibTorch 1.13 keys by the
/// TensorImpl's address printed as a string (c10::guts::to_string, gone in 2.x), LibTorch 2.x
/// by the pointer itself.
using OptimizerStateKey = typename std::remove_reference_t<
    decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type;

template <typename Key = OptimizerStateKey>
Key optimizer_state_key(const torch::Tensor& p) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;
    os << p.unsafeGetTensorImpl();
    return os.str();
  } else {
    return p.unsafeGetTensorImpl();
  }
}

/// torch::optim::Adam whose step() updates each parameter and its two moment buffers in one pass,
/// split between Torch's threads, instead of about eight elementwise tensor operations with two
/// or three full-size temporaries (square root, division, weight decay). Tensor versions are
/// bumped as Adam's in-place operations would. The equations, the state (AdamParamState) and
/// the serialized form are Adam's: a checkpoint saved by either loads into the other. The result
/// equals Adam's up to float rounding (ATen fuses some multiply-adds; this pass does not).
///
/// Only float32 contiguous CPU parameters and gradients without amsgrad take the fused path.
/// Otherwise, when all parameters lie on one device (a GPU) and amsgrad is off, the step runs
/// Adam's operations in Adam's order, each over the list of all parameters at once (ATen's
/// _foreach kernels: about ten launches per step instead of about ten per parameter): Adam's
/// results, bit for bit on the CPU, to the last bit on a GPU (where a division by a scalar may
/// become a multiplication by its reciprocal). Anything else takes Adam's own step.
class FusedAdam : public torch::optim::Adam {
 public:
  FusedAdam(const std::vector<torch::Tensor>& params, const torch::optim::AdamOptions& options)
      : torch::optim::Adam(params, options) {}
  FusedAdam(std::vector<torch::optim::OptimizerParamGroup> groups,
            const torch::optim::AdamOptions& defaults)
      : torch::optim::Adam(std::move(groups), defaults) {}

  torch::Tensor step(LossClosure closure = nullptr) override;

 private:
  // p's state, created as Adam creates it, with its step count advanced.
  torch::optim::AdamParamState& next_step_state(const torch::Tensor& p);
  bool fusable() const;
  bool foreach_capable() const;
  void foreach_step();
};

}  // namespace imcap::detail
