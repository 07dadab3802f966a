// The Show and Tell decoder: Embedding(V, E) `embed` -> LSTM `lstm` -> Linear(H, V) `linear`,
// named as the notebooks' DecoderRNN so its state dict loads one to one. See docs/models.md.
//
//   imcap::Decoder decoder(imcap::DecoderOptions{/*vocab_size=*/10000});
//   // Training, teacher forcing: logits[:, t] scores captions[:, t].
//   torch::Tensor logits = decoder->forward(features, captions, lengths);  // (B, T, V)
//   torch::Tensor loss = imcap::caption_loss(logits, captions, lengths);
//   // Inference: step 0 consumes the image, each later step the previous token.
//   imcap::StepStart s = decoder->start(features);                    // logits [B, V], state
//   torch::Tensor next = decoder->step(s.scores.argmax(1), s.state);  // updates s.state
//   // The searches take it through the StepDecoder interface:
//   imcap::greedy_search(imcap::DecoderStepper(decoder), features, options, tokens);
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/rnn.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "imcap/step_decoder.hpp"

namespace imcap {

namespace detail {
class DecodeStep;
class LossBuffer;
}  // namespace detail

/// Where the image feature enters the LSTM (Tanti et al., "Where to put the image in an image
/// caption generator", Natural Language Engineering 2018).
enum class ImageInject {
  kPre,   ///< as the input of step 0, before the words (Show and Tell, the notebooks)
  kPar,   ///< concatenated to the word embedding at every step: LSTM input size 2E
  kInit,  ///< as the initial state: h0 = tanh(init_h(f)), c0 = tanh(init_c(f))
};

/// Parses "pre", "par" or "init"; throws InvalidArgument otherwise.
ImageInject parse_image_inject(const std::string& name);
/// "pre", "par" or "init".
std::string to_string(ImageInject inject);

/// How inference steps (start, step and step_embedded without autograd) store the weights of the
/// output projection `linear`, the bytes that bound a decoding step's speed at small batches.
///
/// With kBFloat16 (half the bytes) or kInt8 (a quarter, one scale per row) every score gets a
/// known error bound (the compression error's norm times |h|, plus float rounding), and the
/// scores that could be among the 8 highest of their row are recomputed from
/// the float32 weights. So the 8 best words of each row, their order and their scores are
/// float32's (bit for bit), and greedy search chooses the same words (it masks at most three
/// ids); the other
/// scores, and so the log-softmax normaliser and the log-probabilities, differ by at most their
/// bound (with int8 on random weights the largest differences were about 1e-2). Beam search's
/// choices can differ from float32's only between candidates whose scores tie within that bound.
/// The compressed copy is built on first use and rebuilt when the weights change. Only CPU float32
/// steps of at most 16 rows (images times beams) use it; others, and weights with non-finite
/// values, run in float32 (a larger step is a compute-bound matrix product that reads each
/// weight once anyway).
enum class DecodeWeights {
  kFloat32,   ///< the weights as they are (default)
  kBFloat16,  ///< bfloat16 copy: relative error <= 2^-9 per weight
  kInt8,      ///< int8 copy with a float scale per row
};

/// Parses "float32", "bfloat16" or "int8"; throws InvalidArgument otherwise.
DecodeWeights parse_decode_weights(const std::string& name);
/// "float32", "bfloat16" or "int8".
std::string to_string(DecodeWeights weights);

/// Options of the decoder.
struct DecoderOptions {
  /// Vocabulary size V (rows of `embed`, outputs of `linear`). Required (> 0).
  int64_t vocab_size = 0;
  /// Word-embedding size E; also the size of the image feature. Default 256.
  int64_t embed_size = 256;
  /// LSTM hidden size H. Default 512.
  int64_t hidden_size = 512;
  /// Stacked LSTM layers. Default 1.
  int64_t num_layers = 1;
  /// Dropout between stacked LSTM layers (nn.LSTM's `dropout`), in [0, 1). Default 0.
  double dropout = 0.0;
  /// Where the image enters. Default kPar: from scratch it trains to better captions in the
  /// same time (docs/training.md#defaults). The notebooks' model, which imports and parity
  /// with PyTorch use, is kPre.
  ImageInject image_inject = ImageInject::kPar;
};

/// The Show and Tell decoder.
///
/// Sequence alignment (all inject modes): step 0's input is the image (kPre) or no word (a zero
/// word embedding, kPar and kInit); step t >= 1's input is captions[:, t-1]. So logits[:, t]
/// scores captions[:, t] for every t < T: with the notebooks' captions `<start> w1 .. wn <end>`,
/// step 0 predicts `<start>` from the image alone, and the last id of a caption is never input.
///
/// The state between inference steps (a DecodeState) holds h and c (num_layers, B, H), rows
/// along dim 1, and with kPar the image feature (B, E), fed again at every step, rows along
/// dim 0, in that order.
struct DecoderImpl : torch::nn::Module {
  explicit DecoderImpl(const DecoderOptions& options);

  /// Teacher forcing. features (B, E) float; captions (B, T) int64 with T >= 1; lengths (B)
  /// integer in [1, T] or undefined (every row full). Returns logits (B, T, V) with logits[:, t]
  /// scoring captions[:, t]. Padded positions (t >= lengths[b]) are never read, whatever ids
  /// they hold, and the logits there are unspecified; mask them (caption_loss does).
  torch::Tensor forward(const torch::Tensor& features, const torch::Tensor& captions,
                        const torch::Tensor& lengths = {});

  /// The teacher-forced training loss, caption_loss(forward(features, captions, lengths),
  /// captions, lengths), with the same value and gradients, computed faster: the output
  /// projection and the softmax cross-entropy are one autograd function that keeps one
  /// (B*T, V) buffer (the logits, then their gradient in place) and splits its matrix products
  /// between Torch's threads. Its graph supports one backward pass. The buffer is kept for the
  /// next call once the graph is released (a fresh one costs page faults at every step).
  torch::Tensor loss(const torch::Tensor& features, const torch::Tensor& captions,
                     const torch::Tensor& lengths = {});
  /// Sum over b of weights[b] * -log p(captions[b, 0 .. lengths[b]) | features[b]), teacher
  /// forced as loss() is (the same engine): self-critical training's loss, with weights
  /// (r - b) / samples, for captions that were drawn from the model. weights (B) float.
  torch::Tensor weighted_loss(const torch::Tensor& features, const torch::Tensor& captions,
                              const torch::Tensor& lengths, const torch::Tensor& weights);

  /// The state before step 0: zeros, or tanh(init_h/init_c(features)) with kInit.
  DecodeState init_state(const torch::Tensor& features);
  /// Step 0 from the image: init_state(features), then one step whose logits (`scores`) score
  /// the first token (`<start>` for models trained on the notebooks' captions).
  /// `weights`: see DecodeWeights (start, step and step_embedded alike).
  StepStart start(const torch::Tensor& features, DecodeWeights weights = DecodeWeights::kFloat32);
  /// One step: ids (B) int64 of the previous tokens -> logits of the next (B, V); `state`
  /// becomes the state after this step. Throws InvalidArgument for ids outside the vocabulary.
  torch::Tensor step(const torch::Tensor& ids, DecodeState& state,
                     DecodeWeights weights = DecodeWeights::kFloat32);
  /// One step from word embeddings (B, E) instead of ids (kPar appends the image itself).
  torch::Tensor step_embedded(const torch::Tensor& word_embeddings, DecodeState& state,
                              DecodeWeights weights = DecodeWeights::kFloat32);

  const DecoderOptions& options() const { return options_; }
  /// Input size of the LSTM: E, or 2E with kPar.
  int64_t lstm_input_size() const;

  torch::nn::Embedding embed{nullptr};
  torch::nn::LSTM lstm{nullptr};
  torch::nn::Linear linear{nullptr};
  torch::nn::Linear init_h{nullptr};  ///< only with kInit: Linear(E, num_layers * H)
  torch::nn::Linear init_c{nullptr};  ///< only with kInit: Linear(E, num_layers * H)

 private:
  void check_features(const torch::Tensor& features) const;
  void check_state(const DecodeState& state) const;
  // The LSTM's outputs (B, T, H) under teacher forcing: forward() without the projection.
  torch::Tensor hidden_states(const torch::Tensor& features, const torch::Tensor& captions,
                              const torch::Tensor& lengths);
  // loss() and weighted_loss(): the fused projection + cross-entropy over hidden_states, its
  // rows weighted by row_weights (B*T) when defined, else averaged over the targets.
  torch::Tensor projected_loss(const torch::Tensor& features, const torch::Tensor& captions,
                               const torch::Tensor& lengths, const torch::Tensor& row_weights);
  torch::Tensor step_inputs(const torch::Tensor& inputs, DecodeState& state, DecodeWeights weights);

  DecoderOptions options_;
  // The engines behind the inference steps and the loss (src/detail/).
  std::shared_ptr<detail::DecodeStep> decode_step_;
  std::shared_ptr<detail::LossBuffer> loss_buffer_;
};
TORCH_MODULE(Decoder);

/// A Decoder as a StepDecoder, for the searches and sampling. On the CPU, step() checks the
/// tokens against the vocabulary (Decoder::step); on a GPU it does not, since that check would
/// make the host wait for the device at every step: pass only ids below the vocabulary size
/// there. The decoder is shared, not copied.
class DecoderStepper : public StepDecoder {
 public:
  explicit DecoderStepper(Decoder decoder, DecodeWeights weights = DecodeWeights::kFloat32)
      : decoder_(std::move(decoder)), weights_(weights) {}
  StepStart start(const at::Tensor& features) const override;
  at::Tensor step(const at::Tensor& tokens, DecodeState& state) const override;

 private:
  Decoder decoder_;
  DecodeWeights weights_;
};

/// (B, T) bool mask, true where t < lengths[b]. lengths (B) integer.
torch::Tensor length_mask(const torch::Tensor& lengths, int64_t max_len);

/// Mean cross-entropy over the valid positions (t < lengths[b]) of logits (B, T, V) against
/// targets (B, T) int64; padded positions contribute nothing, whatever their ids. With lengths
/// undefined every position counts: then it equals PyTorch's
/// `CrossEntropyLoss()(logits.view(-1, V), targets.view(-1))`, the notebooks' loss.
torch::Tensor caption_loss(const torch::Tensor& logits, const torch::Tensor& targets,
                           const torch::Tensor& lengths = {});

}  // namespace imcap
