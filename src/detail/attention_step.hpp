// The attention decoder's inference step engine behind AttentionDecoderImpl::step_embedded
// (internal): h's three products (W_hh, decoder_att, f_beta) as one, the attention's
// elementwise work fused without intermediates (attend_rows, shared with training), the LSTM
// cell by hand, and fc through DecodeStep (decode weights, huge pages).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <mutex>
#include <vector>

#include "detail/attention_sequence.hpp"
#include "detail/decode_step.hpp"
#include "imcap/decoder.hpp"

namespace imcap::detail {

/// What AttentionDecoderImpl's inference steps keep between calls. Thread-safe: one instance
/// serves concurrent steps.
class AttentionStep {
 public:
  /// Whether forward() takes a step from these tensors: CPU float32, without autograd.
  static bool supported(const torch::Tensor& h, const AttentionSequenceWeights& w,
                        const torch::Tensor& fc_weight);

  /// One step of the module's equations (AttentionDecoderImpl::step_embedded without dropout):
  /// words (N, E), grid (N, P, C), grid_att = encoder_att(grid) (N, P, A), h and c (N, H),
  /// row_gates (N, 4H) added to the gates where defined (AttentionDecoderOptions::mean_feature).
  /// Replaces h, c and alpha (N, P) by the step's and returns fc(h) (N, V), the projection
  /// reading a compressed copy of fc's weights with `weights` other than kFloat32
  /// (DecodeStep::project).
  torch::Tensor forward(const AttentionSequenceWeights& w, const torch::Tensor& fc_weight,
                        const torch::Tensor& fc_bias, const torch::Tensor& words,
                        const torch::Tensor& grid, const torch::Tensor& grid_att, torch::Tensor& h,
                        torch::Tensor& c, torch::Tensor& alpha, const torch::Tensor& row_gates,
                        DecodeWeights weights);

 private:
  // [W_hh; decoder_att; f_beta] (4H + A + C, H) and their biases, built once and again when a
  // source is replaced or changed in place; undefined for inference-mode weights (no version
  // counter), which then take three products.
  std::pair<torch::Tensor, torch::Tensor> stacked(const AttentionSequenceWeights& w);

  std::mutex mutex_;
  torch::Tensor stacked_weight_, stacked_bias_;
  std::vector<torch::Tensor> sources_;  // held, so that their addresses cannot be reused
  std::vector<const void*> data_;
  std::vector<int64_t> versions_;
  DecodeStep projection_;
};

}  // namespace imcap::detail
