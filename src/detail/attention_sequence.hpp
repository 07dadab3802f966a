// Teacher-forced Show, Attend and Tell over a whole caption on the CPU, forward and backward
// (internal).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <utility>

namespace imcap::detail {

/// The AttentionDecoder's parameters that the recurrence uses (sgrvinod's names).
struct AttentionSequenceWeights {
  torch::Tensor decoder_att_weight, decoder_att_bias;  // (A, H), (A)
  torch::Tensor full_att_weight, full_att_bias;        // (1, A), (1)
  torch::Tensor f_beta_weight, f_beta_bias;            // (C, H), (C)
  torch::Tensor w_ih, w_hh, b_ih, b_hh;                // decode_step: (4H, E + C), (4H, H), (4H)
};

/// The sizes of one step's rows and the layout of the stacked projection of h (hp): per row,
/// W_hh's gates (4H), then decoder_att (A), then f_beta (C).
struct AttentionSizes {
  int64_t batch, cells, enc, att, gates;
  int64_t wide() const { return gates + att + enc; }
};

/// One step's attention for rows [b0, b1) of float32 buffers, without allocating: from hp
/// (B, wide), the stacked projection of h_{t-1} (biases included), the grid (B, P, C),
/// grid_att = encoder_att(grid) (B, P, A) and the gate sigmoid(f_beta(h)) (B, C), writes
/// alpha = softmax_p(full_att(z)) (B, P) with z = relu(grid_att + decoder_att(h)), the context
/// alpha grid (B, C) and the gated context (B, C); and z itself (B, P, A) unless z is null
/// (inference, where no backward reads it). w_fa (A) and b_fa are full_att's. Training's
/// sequence and the searches' step share it, so both compute the same sums in the same order;
/// with AVX2 and FMA where the CPU has them.
void attend_rows(const AttentionSizes& s, int64_t b0, int64_t b1, const float* hp,
                 const float* grid, const float* grid_att, const float* w_fa, float b_fa,
                 const float* gate, float* z, float* alpha, float* ctx, float* gated);

/// Whether attention_sequence() takes these inputs: every tensor float32 on the CPU.
bool attention_sequence_supported(const torch::Tensor& grid, const torch::Tensor& words,
                                  const AttentionSequenceWeights& w,
                                  const torch::Tensor& row_gates = {});

/// The hidden states (B, T, H) and attention weights (B, T, P) of the AttentionDecoder's
/// teacher-forced loop: per step t, from h = h_{t-1},
///   alpha = softmax_p(full_att(relu(grid_att + decoder_att(h))))
///   x = [words_t, sigmoid(f_beta(h)) * (alpha grid)],  (h, c) = LSTMCell(x, (h, c)),
/// with row_gates (B, 4H), where defined, added to each row's gates at every step (the mean
/// feature's share, AttentionDecoderOptions::mean_feature),
/// for grid (B, P, C), its projection grid_att = encoder_att(grid) (B, P, A), word embeddings
/// (B, T, E) and the initial state h0, c0 (B, H). The same equations as the module's loop, as
/// one autograd function with gradients for every input: the words' share of the gates for
/// all steps in one matrix product, then per step one product of h with decoder_att, f_beta
/// and W_hh stacked, and one with the gated context; the attention's elementwise work by hand.
/// Backward runs the steps in reverse with two products per step, then each weight's gradient
/// for all steps in one product.
std::pair<torch::Tensor, torch::Tensor> attention_sequence(
    const torch::Tensor& grid, const torch::Tensor& grid_att, const torch::Tensor& words,
    const torch::Tensor& h0, const torch::Tensor& c0, const AttentionSequenceWeights& w,
    const torch::Tensor& row_gates = {});

}  // namespace imcap::detail
