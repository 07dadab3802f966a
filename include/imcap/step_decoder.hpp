// The step interface every decoder implements: the searches (greedy, beam), sampling and the
// GPU's graph replay drive a decoder one token at a time through it, and the decoder's state
// between steps is a DecodeState.
//
//   imcap::DecoderStepper steps(model.decoder());               // or any StepDecoder
//   imcap::StepStart s = steps.start(features);                 // scores [B, V] of token 1
//   at::Tensor next = steps.step(s.scores.argmax(1), s.state);  // scores of token 2
//
// See docs/search.md#the-decoder-interface.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace imcap {

/// The recurrent state of a decoder for N rows (a row is one image in greedy search and
/// sampling, one beam of one image in beam search). Each tensor keeps its rows along its own
/// dimension, e.g. LSTM h and c of shape [layers, N, H] use row_dim 1, per-image attention
/// memory [N, P, D] uses row_dim 0. The search reorders, duplicates and drops rows with
/// select_rows(); the decoder never needs to know which row is which.
struct DecodeState {
  /// The decoder's tensors (h, c, memory ...), in an order of the decoder's choosing.
  std::vector<at::Tensor> tensors;
  /// For each tensor, the dimension that indexes rows.
  std::vector<std::int64_t> row_dims;

  /// Appends a tensor whose rows lie along `row_dim`.
  void add(at::Tensor tensor, std::int64_t row_dim) {
    tensors.push_back(std::move(tensor));
    row_dims.push_back(row_dim);
  }
  /// Replaces every tensor t by t.index_select(row_dim, rows): row i of the result is row
  /// rows[i] of the input (rows: int64, on the state's device). Throws InvalidArgument when
  /// tensors and row_dims disagree or a row_dim is out of range.
  void select_rows(const at::Tensor& rows);
  /// Number of rows (the size of the first tensor along its row_dim; 0 when there is none).
  /// Throws InvalidArgument when the tensors disagree.
  std::int64_t num_rows() const;
};

/// What StepDecoder::start returns: the first step's scores and the state after it.
struct StepStart {
  /// [B, V] log-probabilities (or logits: the search applies log_softmax, which leaves
  /// log-probabilities unchanged) of the first generated token.
  at::Tensor scores;
  /// The state after the first step, B rows.
  DecodeState state;
};

/// A decoder that can be driven one token at a time. Implementations wrap a model; they must
/// not keep per-call mutable state, so one instance can serve searches in several threads at
/// once (the caller owns the state and passes it in). Under autograd (GradMode on) the scores
/// stay differentiable, as sampling for self-critical training needs.
///
/// Two families of models fit: Show-and-Tell as in the seed notebook (the image feature is the
/// LSTM input at step 0, and the first predicted token is usually <start>, which the search
/// strips, see SpecialTokens::start), and models whose step 0 consumes <start> after being
/// conditioned on the image. start() hides the difference.
class StepDecoder {
 public:
  virtual ~StepDecoder() = default;
  /// First step from image features whose dim 0 is the batch ([B, E], or [B, P, D] for
  /// attention models): scores of the first token for each image, and the state.
  virtual StepStart start(const at::Tensor& features) const = 0;
  /// Next step: the last tokens [N] (int64, on the model's device) and the state of those N
  /// rows; returns the scores [N, V] of the next token (log-probabilities or logits) and
  /// replaces `state` by the state after this step.
  virtual at::Tensor step(const at::Tensor& tokens, DecodeState& state) const = 0;
};

}  // namespace imcap
