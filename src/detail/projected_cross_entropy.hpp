// The teacher-forced training loss's engine (internal): the decoder's output projection and
// the softmax cross-entropy in one autograd function, with one (rows, V) buffer that holds the
// logits and then, in place, their gradient (Decoder::loss).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <mutex>

namespace imcap::detail {

/// PyTorch's default ignore_index: targets equal to it add nothing to the loss.
inline constexpr std::int64_t kIgnoreIndex = -100;

/// mean over the rows n with targets[n] != kIgnoreIndex of (logsumexp(x_n) - x_n[targets[n]]),
/// x = h w^T + b: cross_entropy(h w^T + b, targets, ignore_index) with the same value and
/// gradients (for h, w and b), its matrix products split between Torch's threads. h (N, H),
/// w (V, H), b (V), targets (N) int64. `buffer`: (N, V) of h's type and device to hold the
/// logits, or undefined for a fresh one. Its graph supports one backward pass. With
/// `row_weights` (N) of h's type, the loss is instead the weighted sum over the rows with a
/// target of row_weights[n] * (logsumexp(x_n) - x_n[targets[n]]) (self-critical training's).
torch::Tensor projected_cross_entropy(const torch::Tensor& h, const torch::Tensor& w,
                                      const torch::Tensor& b, const torch::Tensor& targets,
                                      const torch::Tensor& buffer = {},
                                      const torch::Tensor& row_weights = {});

/// The row_weights of projected_cross_entropy for a batch of captions: each caption's weight
/// `weights[b]` on every one of its `steps` positions, (B * steps). Checks that weights is float
/// of shape [batch]; `what` names it in the error.
torch::Tensor caption_row_weights(const torch::Tensor& weights, std::int64_t batch,
                                  std::int64_t steps, const char* what);

/// The logits buffer of projected_cross_entropy, kept between training steps: a fresh one of
/// that size (72 MB in the benchmark) comes from mmap and is page-faulted and zeroed by the
/// kernel at every step. Thread-safe.
class LossBuffer {
 public:
  /// A (rows, cols) tensor: the kept one when nothing else holds it or a view of it (a graph
  /// not yet backpropagated) and it is large enough, else a new one that is kept instead (it
  /// grows to the largest batch: captions of different lengths give different row counts).
  torch::Tensor get(std::int64_t rows, std::int64_t cols, const torch::TensorOptions& options);

 private:
  std::mutex mutex_;
  torch::Tensor buffer_;
};

}  // namespace imcap::detail
