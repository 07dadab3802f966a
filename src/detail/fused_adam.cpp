#include "detail/fused_adam.hpp"

#include <ATen/Parallel.h>

#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace imcap::detail {
namespace {

// A float32 CPU tensor whose elements fill its memory without gaps or overlaps, laid out as
// `like` (row-major, or channels_last as the trainer keeps convolution weights): the update then
// runs over the raw memory of all four tensors at once.
bool plain_float_cpu(const torch::Tensor& t, const torch::Tensor& like) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat &&
         t.layout() == torch::kStrided && t.is_non_overlapping_and_dense() &&
         t.sizes() == like.sizes() && t.strides() == like.strides();
}

struct Coefficients {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bias_correction2, eps, neg_step_size,
      weight_decay;
};

// The same operations as Adam's, element by element, in float:
//   g += wd * p; m = m * b1 + (1 - b1) * g; v = v * b2 + (1 - b2) * g * g;
//   p += -lr / bc1 * (m / (sqrt(v) / sqrt(bc2) + eps))
void update(float* __restrict p, const float* __restrict grad, float* __restrict m,
            float* __restrict v, int64_t begin, int64_t end, const Coefficients c) {
  for (int64_t i = begin; i < end; ++i) {
    float g = grad[i];
    if (c.weight_decay != 0.0f) g = g + c.weight_decay * p[i];
    const float mi = m[i] * c.beta1 + c.one_minus_beta1 * g;
    const float vi = v[i] * c.beta2 + c.one_minus_beta2 * (g * g);
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / c.sqrt_bias_correction2 + c.eps;
    p[i] = p[i] + c.neg_step_size * (mi / denom);
  }
}

}  // namespace

torch::optim::AdamParamState& FusedAdam::next_step_state(const torch::Tensor& p) {
  const OptimizerStateKey key = optimizer_state_key(p);
  auto it = state_.find(key);
  if (it == state_.end()) {  // Adam's fresh state: step 0, zero moments
    auto fresh = std::make_unique<torch::optim::AdamParamState>();
    fresh->step(0);
    fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
    fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
    it = state_.insert_or_assign(key, std::move(fresh)).first;
  }
  auto& s = static_cast<torch::optim::AdamParamState&>(*it->second);
  s.step(s.step() + 1);
  return s;
}

bool FusedAdam::foreach_capable() const {
  std::optional<torch::Device> device;
  for (const auto& group : param_groups_) {
    const auto& options = static_cast<const torch::optim::AdamOptions&>(group.options());
    if (options.amsgrad()) return false;
    for (const auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      if (p.layout() != torch::kStrided || p.grad().layout() != torch::kStrided ||
          !p.is_floating_point() || p.grad().scalar_type() != p.scalar_type())
        return false;
      if (device && *device != p.device()) return false;
      device = p.device();
    }
  }
  return true;
}

void FusedAdam::foreach_step() {
  for (auto& group : param_groups_) {
    const auto& options = static_cast<const torch::optim::AdamOptions&>(group.options());
    const double beta1 = std::get<0>(options.betas());
    const double beta2 = std::get<1>(options.betas());
    // Parameters are updated together when their step counts agree (they differ only when a
    // parameter had no gradient at some step).
    std::map<int64_t, std::vector<torch::Tensor>> params_by_step;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& s = next_step_state(p);
      params_by_step[s.step()].push_back(p);
    }
    for (auto& [step, params] : params_by_step) {
      std::vector<torch::Tensor> grads, exp_avgs, exp_avg_sqs;
      for (const auto& p : params) {
        auto& s = static_cast<torch::optim::AdamParamState&>(*state_.at(optimizer_state_key(p)));
        grads.push_back(p.grad());
        exp_avgs.push_back(s.exp_avg());
        exp_avg_sqs.push_back(s.exp_avg_sq());
      }
      const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(step));
      const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(step));
      // Adam's operations in Adam's order, each over the whole list at once.
      if (options.weight_decay() != 0)
        grads = at::_foreach_add(grads, params, options.weight_decay());
      at::_foreach_mul_(exp_avgs, beta1);
      at::_foreach_add_(exp_avgs, grads, 1 - beta1);
      at::_foreach_mul_(exp_avg_sqs, beta2);
      at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2);
      std::vector<torch::Tensor> denoms = at::_foreach_sqrt(exp_avg_sqs);
      at::_foreach_div_(denoms, std::sqrt(bias_correction2));
      at::_foreach_add_(denoms, options.eps());
      at::_foreach_addcdiv_(params, exp_avgs, denoms, -options.lr() / bias_correction1);
    }
  }
}

bool FusedAdam::fusable() const {
  for (const auto& group : param_groups_) {
    const auto& options = static_cast<const torch::optim::AdamOptions&>(group.options());
    if (options.amsgrad()) return false;
    for (const auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      if (!plain_float_cpu(p, p) || !plain_float_cpu(p.grad(), p)) return false;
      const auto it = state_.find(optimizer_state_key(p));
      if (it == state_.end()) continue;  // created below with p's layout (zeros_like)
      const auto& s = static_cast<const torch::optim::AdamParamState&>(*it->second);
      if (!plain_float_cpu(s.exp_avg(), p) || !plain_float_cpu(s.exp_avg_sq(), p)) return false;
    }
  }
  return true;
}

torch::Tensor FusedAdam::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  if (!fusable()) {
    if (foreach_capable()) {
      foreach_step();
    } else {
      torch::optim::Adam::step(nullptr);
    }
    return loss;
  }
  for (auto& group : param_groups_) {
    const auto& options = static_cast<const torch::optim::AdamOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& s = next_step_state(p);
      const double beta1 = std::get<0>(options.betas());
      const double beta2 = std::get<1>(options.betas());
      const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(s.step()));
      const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(s.step()));
      const Coefficients c{static_cast<float>(beta1),
                           static_cast<float>(1 - beta1),
                           static_cast<float>(beta2),
                           static_cast<float>(1 - beta2),
                           static_cast<float>(std::sqrt(bias_correction2)),
                           static_cast<float>(options.eps()),
                           static_cast<float>(-options.lr() / bias_correction1),
                           static_cast<float>(options.weight_decay())};
      float* pp = p.data_ptr<float>();
      const float* gp = p.grad().data_ptr<float>();
      float* mp = s.exp_avg().data_ptr<float>();
      float* vp = s.exp_avg_sq().data_ptr<float>();
      at::parallel_for(0, p.numel(), 1 << 15,
                       [&](int64_t begin, int64_t end) { update(pp, gp, mp, vp, begin, end, c); });
      // Written through raw pointers: bump the versions as the in-place tensor operations of
      // Adam would, so that what caches a tensor's contents (the encoder's folded inference
      // weights, autograd's saved-tensor checks) sees the change.
      p.unsafeGetTensorImpl()->bump_version();
      s.exp_avg().unsafeGetTensorImpl()->bump_version();
      s.exp_avg_sq().unsafeGetTensorImpl()->bump_version();
    }
  }
  return loss;
}

}  // namespace imcap::detail
