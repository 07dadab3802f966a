// The projected cross-entropy (detail/projected_cross_entropy.hpp).
#include "detail/projected_cross_entropy.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <functional>

#include <fmt/format.h>

#include "detail/parallel.hpp"
#include "detail/tensor_check.hpp"
#include "imcap/error.hpp"

namespace imcap::detail {
namespace {

// Runs f(begin, end) on consecutive blocks of the rows [r0, r1) of a matrix with `cols` columns,
// each block about 256 KB, so that an elementwise chain over a block stays in the core's cache
// instead of streaming the whole (B*T, V) matrix from memory once per operation, with a temporary
// of that size for each.
// On a GPU the whole range is one block: one kernel over the matrix beats many small ones.
void for_row_blocks(const torch::Tensor& on, int64_t r0, int64_t r1, int64_t cols,
                    const std::function<void(int64_t, int64_t)>& f) {
  if (!on.device().is_cpu()) {
    f(r0, r1);
    return;
  }
  const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(cols, 1));
  for (int64_t q = r0; q < r1; q += rows) f(q, std::min(q + rows, r1));
}

// detail::split_rows on the CPU; on a GPU, one call for all rows (the device runs them in
// parallel, and kernels launched from several host threads would only queue up).
void split_rows_of(const torch::Tensor& on, int64_t n,
                   const std::function<void(int64_t, int64_t)>& f) {
  if (!on.device().is_cpu()) {
    f(0, n);
    return;
  }
  split_rows(n, f);
}

// loss = mean over rows with a target of (logsumexp(x_n) - x_n[t_n]), x = h W^T + b: the output
// projection and cross_entropy(ignore_index) in one. Backward turns the saved logits into
// softmax - onehot in place.
struct ProjectedCrossEntropy : torch::autograd::Function<ProjectedCrossEntropy> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::Tensor& h, const torch::Tensor& w,
                                                const torch::Tensor& b,
                                                const torch::Tensor& targets,
                                                const torch::Tensor& buffer,
                                                const torch::Tensor& row_weights) {
    const int64_t n = h.size(0), v = w.size(0);
    const torch::Tensor hc = h.contiguous();
    torch::Tensor logits = buffer.defined() ? buffer : at::empty({n, v}, h.options());
    torch::Tensor lse = at::empty({n}, h.options());
    split_rows_of(h, n, [&](int64_t r0, int64_t r1) {
      torch::Tensor out = logits.slice(0, r0, r1);
      at::addmm_out(out, b, hc.slice(0, r0, r1), w.t());
      for_row_blocks(h, r0, r1, v, [&](int64_t q0, int64_t q1) {
        torch::Tensor part = lse.slice(0, q0, q1);
        at::logsumexp_out(part, logits.slice(0, q0, q1), /*dim=*/1);
      });
    });
    // A weighted sum: each valid row's weight (its weight, or 1 / count for the mean).
    torch::Tensor valid = targets.ne(kIgnoreIndex).to(h.scalar_type());
    if (row_weights.numel() > 0)
      valid = valid * row_weights.to(h.scalar_type());
    else
      valid = valid / valid.sum();
    const torch::Tensor picked = logits.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1);
    const torch::Tensor loss = ((lse - picked) * valid).sum();
    ctx->save_for_backward({hc, w});
    ctx->saved_data["logits"] = logits;
    ctx->saved_data["lse"] = lse;
    ctx->saved_data["targets"] = targets;
    ctx->saved_data["valid"] = valid;
    return {loss};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& h = saved[0];
    const torch::Tensor& w = saved[1];
    auto& slot = ctx->saved_data["logits"];
    if (slot.isNone())
      throw InvalidArgument("Decoder::loss: backward can run only once on its graph");
    torch::Tensor g = slot.toTensor();
    slot = c10::IValue();  // the buffer becomes the gradient
    const torch::Tensor lse = ctx->saved_data["lse"].toTensor();
    const torch::Tensor targets = ctx->saved_data["targets"].toTensor();
    const torch::Tensor valid = ctx->saved_data["valid"].toTensor();
    const torch::Tensor row_scale = valid * grads[0];
    // g = (softmax(x) - onehot(t)) * scale on rows with a target, 0 elsewhere.
    split_rows_of(g, g.size(0), [&](int64_t r0, int64_t r1) {
      for_row_blocks(g, r0, r1, g.size(1), [&](int64_t q0, int64_t q1) {
        g.slice(0, q0, q1)
            .sub_(lse.slice(0, q0, q1).unsqueeze(1))
            .exp_()
            .mul_(row_scale.slice(0, q0, q1).unsqueeze(1));
      });
    });
    g.scatter_add_(1, targets.clamp_min(0).unsqueeze(1), -row_scale.unsqueeze(1));
    const int64_t n = g.size(0), v = g.size(1);
    torch::Tensor grad_h = at::empty_like(h);
    torch::Tensor grad_w = at::empty_like(w);
    split_rows_of(g, n, [&](int64_t r0, int64_t r1) {
      torch::Tensor out = grad_h.slice(0, r0, r1);
      at::mm_out(out, g.slice(0, r0, r1), w);
    });
    split_rows_of(g, v, [&](int64_t r0, int64_t r1) {
      torch::Tensor out = grad_w.slice(0, r0, r1);
      at::mm_out(out, g.slice(1, r0, r1).t(), h);
    });
    return {grad_h, grad_w, g.sum(0), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor projected_cross_entropy(const torch::Tensor& h, const torch::Tensor& w,
                                      const torch::Tensor& b, const torch::Tensor& targets,
                                      const torch::Tensor& buffer,
                                      const torch::Tensor& row_weights) {
  // Autograd functions take no undefined tensors (LibTorch 1.13): an empty one means "none".
  return ProjectedCrossEntropy::apply(
      h, w, b, targets, buffer,
      row_weights.defined() ? row_weights : at::empty({0}, h.options()))[0];
}

torch::Tensor LossBuffer::get(std::int64_t rows, std::int64_t cols,
                              const torch::TensorOptions& options) {
  std::lock_guard<std::mutex> lock(mutex_);
  const bool reusable = buffer_.defined() && buffer_.use_count() == 1 &&
                        buffer_.storage().use_count() == 1 && buffer_.numel() >= rows * cols &&
                        buffer_.options().dtype() == options.dtype() &&
                        buffer_.device() == options.device();
  if (!reusable) buffer_ = at::empty({rows * cols}, options);
  return buffer_.narrow(0, 0, rows * cols).view({rows, cols});
}

torch::Tensor caption_row_weights(const torch::Tensor& weights, std::int64_t batch,
                                  std::int64_t steps, const char* what) {
  check_tensor(weights.defined() && weights.dim() == 1 && weights.size(0) == batch &&
                   weights.is_floating_point(),
               what, fmt::format("float of shape [{}]", batch), weights);
  // Padding is ignored by its target, so every position may carry the caption's weight.
  return weights.unsqueeze(1).expand({batch, steps}).reshape({-1});
}

}  // namespace imcap::detail
