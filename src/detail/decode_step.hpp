// The inference step's engine behind DecoderImpl::start/step (internal): the LSTM cell by hand,
// the output projection with compressed copies of its weights (DecodeWeights), and huge pages
// for weights that serve many steps.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "imcap/decoder.hpp"

namespace imcap::detail {

class CompressedProjection;

/// What DecoderImpl's inference steps keep between calls. Thread-safe: one instance serves
/// concurrent steps.
class DecodeStep {
 public:
  /// One step of a stacked LSTM without autograd or dropout: PyTorch's equations and gate order
  /// (i, f, g, o), one product per weight matrix. inputs (B, I); h and c (L, B, H); `weights`
  /// lstm->all_weights() (per layer W_ih, W_hh, b_ih, b_hh). Returns the last layer's output
  /// (B, H) and sets h_next and c_next (L, B, H).
  torch::Tensor lstm(const torch::Tensor& inputs, const torch::Tensor& h, const torch::Tensor& c,
                     const std::vector<torch::Tensor>& weights, torch::Tensor& h_next,
                     torch::Tensor& c_next);

  /// hidden (B, H) -> hidden w^T + b (B, V), the output projection of an inference step. Small
  /// CPU float32 steps run imcap's own kernel (the same sums whatever the threads), reading a
  /// bfloat16 or int8 copy of w with `weights` other than kFloat32 and recomputing the scores
  /// that could be among the best from float32 (docs/search.md#decode-weights). The copy is
  /// built on first use and again when w or b is replaced or changed in place.
  torch::Tensor project(const torch::Tensor& hidden, const torch::Tensor& w, const torch::Tensor& b,
                        DecodeWeights weights);

  /// Counts a step that reads these CPU weights; once the same storages have served
  /// kStepsBeforeHugePages steps, asks the kernel to back them with huge pages.
  void advise_huge_pages(const std::vector<torch::Tensor>& lstm_weights,
                         const torch::Tensor& projection);

 private:
  struct Compressed {
    std::shared_ptr<const CompressedProjection> projection;
    torch::Tensor weight, bias;  // held, so that their addresses cannot be reused by others
    std::vector<const void*> data;
    std::vector<int64_t> versions;
    bool built = false;
  };
  std::mutex mutex_;
  Compressed bf16_, int8_;
  // The storages that got (or will get) huge pages, held so that their addresses cannot be
  // reused by other weights while they are compared.
  std::vector<c10::Storage> paged_;
  std::vector<const void*> paged_data_;
  int64_t paged_steps_ = 0;
};

/// y = x w^T + b for x (B, K) without autograd: for one row a matrix-vector product, where the
/// general product (gemm) would pack all of w at every step; with several Torch threads and a
/// few rows, imcap's own kernel with the rows of w split between the threads (OpenBLAS
/// serializes calls made from several threads at once); with many rows, one general product
/// per thread on its share of the rows of x.
torch::Tensor step_affine(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b);

/// LSTMCell's equations from its gates (N, 4H), in PyTorch's order i, f, g, o, and c (N, H):
/// {h', c'} with c' = σ(f) c + σ(i) tanh(g), h' = σ(o) tanh(c'); any device and type.
std::pair<torch::Tensor, torch::Tensor> lstm_from_gates(const torch::Tensor& gates,
                                                        const torch::Tensor& c);

}  // namespace imcap::detail
