// The Show, Attend and Tell decoder (Xu et al., ICML 2015): an LSTM that, before each word,
// attends softly over the CNN's spatial grid. It follows sgrvinod's DecoderWithAttention (the
// "a-PyTorch-Tutorial-to-Image-Captioning" project) and registers its modules under that
// project's attribute names, so that its decoder state dict maps one to one. See docs/models.md.
//
//   imcap::AttentionDecoderOptions options;
//   options.vocab_size = vocab.size();
//   options.encoder_dim = 2048;                                   // ResNet-50/101/152 grids
//   imcap::AttentionDecoder decoder(options);
//   torch::Tensor grid = encoder->forward_spatial(images);        // (B, P, C)
//   // Training, teacher forcing: logits[:, t] scores captions[:, t + 1].
//   imcap::AttentionOutput out = decoder->forward(grid, captions, lengths);
//   torch::Tensor loss = decoder->loss(grid, captions, lengths);  // + the attention penalty
//   // Inference: step 0 consumes <start>, each later step the previous token.
//   imcap::greedy_search(imcap::AttentionStepper(decoder), grid, options, tokens);
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/rnn.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "imcap/decoder.hpp"
#include "imcap/step_decoder.hpp"

namespace imcap {

namespace detail {
class AttentionStep;
struct AttentionSequenceWeights;
class LossBuffer;
}  // namespace detail

/// Options of the attention decoder. The defaults are sgrvinod's.
struct AttentionDecoderOptions {
  /// Vocabulary size V (rows of `embedding`, outputs of `fc`). Required (> 0).
  int64_t vocab_size = 0;
  /// Channels C of the grid: 2048 for ResNet-50/101/152, 512 for ResNet-18/34. Default 2048.
  int64_t encoder_dim = 2048;
  /// Word-embedding size E. Default 512.
  int64_t embed_size = 512;
  /// LSTM hidden size H (sgrvinod's decoder_dim). Default 512.
  int64_t hidden_size = 512;
  /// Size A of the attention's hidden layer. Default 512.
  int64_t attention_dim = 512;
  /// Dropout on h before `fc`, in [0, 1). Default 0.5.
  double dropout = 0.5;
  /// λ of the doubly stochastic regularisation, λ · mean over images and positions of
  /// (1 - Σ_t α_tp / τ)² with τ = max(1, T / P) for a caption of T words over P positions
  /// (sgrvinod's (1 - Σ_t α_tp)² wherever T <= P), added by loss(); >= 0, 0 turns it off.
  /// Default 1.
  double attention_reg = 1.0;
  /// Append each position's place in the map, x and y in [-1, 1] (row-major, as the grid is
  /// flattened from an S x S map), to its C values: the attention, the attended context, the
  /// gate and the initial state then see C + 2 channels, so that the context says where the
  /// decoder looked. sgrvinod's decoder (false) is blind to that: permuting the grid's positions
  /// leaves its outputs unchanged, and a frozen CNN marks positions only through its zero
  /// padding. Needs a square grid. Default false (sgrvinod's).
  bool grid_positions = false;
  /// Feed the grid's mean to the LSTM at every step as well, beside the attended feature, as
  /// the first LSTM of Anderson et al.'s top-down model (CVPR 2018) reads the mean-pooled
  /// feature: the module `mean_gates` (C -> 4H) maps mean_p a_p once per caption, and its
  /// output is added to the LSTM's gates at every step. The attended feature is an average
  /// whose weights sum to one, so it does not change with how many things the image holds; in
  /// sgrvinod's decoder (false) the mean reaches the LSTM only once, through init_h and init_c.
  /// Default false (sgrvinod's).
  bool mean_feature = false;
  /// Id of `<start>`, the input of the first step (CaptionModel sets it from the vocabulary).
  /// Default 1, the notebooks' vocabulary.
  int64_t start_id = 1;
};

/// Teacher-forced outputs of the attention decoder for captions (B, T).
struct AttentionOutput {
  torch::Tensor logits;  ///< (B, T - 1, V): logits[:, t] scores captions[:, t + 1]
  torch::Tensor alphas;  ///< (B, T - 1, P): the attention over the grid that produced them
};

/// Additive (Bahdanau) attention: e_p = full_att(relu(encoder_att(a_p) + decoder_att(h))),
/// α = softmax_p(e), and the attended feature Σ_p α_p a_p.
struct AttentionImpl : torch::nn::Module {
  AttentionImpl(int64_t encoder_dim, int64_t hidden_size, int64_t attention_dim);
  /// grid (B, P, C), hidden (B, H) -> {attended (B, C), α (B, P)}.
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& grid,
                                                  const torch::Tensor& hidden);
  /// The same with encoder_att(grid) (B, P, A) computed once for every step.
  std::pair<torch::Tensor, torch::Tensor> attend(const torch::Tensor& grid,
                                                 const torch::Tensor& grid_att,
                                                 const torch::Tensor& hidden);

  torch::nn::Linear encoder_att{nullptr};  ///< C -> A
  torch::nn::Linear decoder_att{nullptr};  ///< H -> A
  torch::nn::Linear full_att{nullptr};     ///< A -> 1
};
TORCH_MODULE(Attention);

/// The attention decoder. Before each step the attention looks at the grid with h, a gate
/// sigmoid(f_beta(h)) scales the attended feature, and LSTMCell `decode_step` takes the word
/// embedding and that feature (under mean_feature its gates get mean_gates(mean_p a_p) added);
/// `fc` scores the next word from dropout(h). The state starts as h = init_h(mean_p a_p),
/// c = init_c(mean_p a_p), without tanh, as sgrvinod's.
///
/// Sequence alignment: the input of step t is captions[:, t], so with captions
/// `<start> w1 .. wn <end>` step 0 consumes `<start>` and predicts w1; a caption of length L
/// has L - 1 targets. Rows are computed in full and padded steps ignored, which gives the
/// results of sgrvinod's loop over length-sorted, shrinking batches.
///
/// The inference state (a DecodeState) holds h and c (N, H), the grid (N, P, C),
/// encoder_att(grid) (N, P, A), the attention weights α (N, P) that produced the last scores,
/// and under mean_feature mean_gates(mean_p a_p) (N, 4H), in that order, every row along dim 0
/// (attention_weights() reads α).
struct AttentionDecoderImpl : torch::nn::Module {
  explicit AttentionDecoderImpl(const AttentionDecoderOptions& options);

  /// Teacher forcing. grid (B, P, C) float; captions (B, T) int64 with T >= 2; lengths (B)
  /// integer in [2, T] or undefined (every row full). Padded positions are never read, and the
  /// outputs there are unspecified.
  AttentionOutput forward(const torch::Tensor& grid, const torch::Tensor& captions,
                          const torch::Tensor& lengths = {});
  /// The training loss: the mean cross-entropy over the targets (the fused projection and
  /// cross-entropy of Decoder::loss), plus attention_reg · mean_{b,p} (1 - Σ_t α_btp / τ_b)² over
  /// the valid steps (τ_b = max(1, T_b / P): AttentionDecoderOptions::attention_reg), that
  /// penalty multiplied by `penalty_scale` (data-parallel training weighs the ranks'
  /// cross-entropy by their share of the targets, their penalty by their share of the captions).
  torch::Tensor loss(const torch::Tensor& grid, const torch::Tensor& captions,
                     const torch::Tensor& lengths = {}, double penalty_scale = 1.0);
  /// Sum over b of weights[b] * -log p(captions[b, 1 .. lengths[b]) | grid[b]), teacher forced
  /// (no attention penalty): self-critical training's loss. weights (B) float.
  torch::Tensor weighted_loss(const torch::Tensor& grid, const torch::Tensor& captions,
                              const torch::Tensor& lengths, const torch::Tensor& weights);

  /// The state before step 0 (α zeros).
  DecodeState init_state(const torch::Tensor& grid);
  /// Step 0: init_state(grid), then `<start>` in; the scores of the first word.
  StepStart start(const torch::Tensor& grid, DecodeWeights weights = DecodeWeights::kFloat32);
  /// One step: ids (N) int64 of the previous tokens -> logits (N, V) of the next; `state`
  /// becomes the state after this step. Throws InvalidArgument for ids outside the vocabulary.
  /// Without autograd on the CPU, `weights` other than kFloat32 read fc from a compressed copy,
  /// as Decoder::step does (docs/search.md#decode-weights).
  torch::Tensor step(const torch::Tensor& ids, DecodeState& state,
                     DecodeWeights weights = DecodeWeights::kFloat32);
  /// One step from word embeddings (N, E).
  torch::Tensor step_embedded(const torch::Tensor& word_embeddings, DecodeState& state,
                              DecodeWeights weights = DecodeWeights::kFloat32);
  /// α (N, P) of a state: the attention that produced the last step's scores.
  static const torch::Tensor& attention_weights(const DecodeState& state);

  const AttentionDecoderOptions& options() const { return options_; }
  /// Channels of each position the modules read: encoder_dim, plus 2 with grid_positions.
  int64_t grid_channels() const;

  Attention attention{nullptr};
  torch::nn::Embedding embedding{nullptr};
  torch::nn::Dropout dropout{nullptr};
  // C below is grid_channels().
  torch::nn::LSTMCell decode_step{nullptr};  ///< LSTMCell(E + C -> H)
  torch::nn::Linear init_h{nullptr};         ///< C -> H
  torch::nn::Linear init_c{nullptr};         ///< C -> H
  torch::nn::Linear f_beta{nullptr};         ///< H -> C, the gate
  torch::nn::Linear fc{nullptr};             ///< H -> V
  /// C -> 4H, the grid mean's share of the gates; registered under mean_feature only (null
  /// otherwise, so that sgrvinod's state dict is unchanged).
  torch::nn::Linear mean_gates{nullptr};

 private:
  void check_grid(const torch::Tensor& grid) const;
  // The grid the modules read: `grid` (B, P, encoder_dim), with its positions' x and y
  // appended under grid_positions.
  torch::Tensor with_positions(const torch::Tensor& grid) const;
  void check_state(const DecodeState& state) const;
  // The parameters of the recurrence, for the CPU engines (detail/attention_sequence.hpp).
  detail::AttentionSequenceWeights recurrence_weights() const;
  // h (B, T - 1, H) and α (B, T - 1, P) under teacher forcing.
  std::pair<torch::Tensor, torch::Tensor> hidden_states(const torch::Tensor& grid,
                                                        const torch::Tensor& captions,
                                                        const torch::Tensor& lengths);
  // The targets captions[:, 1:], kIgnoreIndex past each caption's end.
  torch::Tensor targets(const torch::Tensor& captions, const torch::Tensor& lengths) const;
  torch::Tensor projected(const torch::Tensor& hidden, const torch::Tensor& targets,
                          const torch::Tensor& row_weights);

  AttentionDecoderOptions options_;
  std::shared_ptr<detail::LossBuffer> loss_buffer_;
  std::shared_ptr<detail::AttentionStep> inference_step_;
};
TORCH_MODULE(AttentionDecoder);

/// An AttentionDecoder as a StepDecoder, for the searches and sampling; features are the grid
/// (B, P, C). The decoder is shared, not copied.
class AttentionStepper : public StepDecoder {
 public:
  explicit AttentionStepper(AttentionDecoder decoder,
                            DecodeWeights weights = DecodeWeights::kFloat32)
      : decoder_(std::move(decoder)), weights_(weights) {}
  StepStart start(const at::Tensor& features) const override;
  at::Tensor step(const at::Tensor& tokens, DecodeState& state) const override;

 private:
  AttentionDecoder decoder_;
  DecodeWeights weights_;
};

}  // namespace imcap
