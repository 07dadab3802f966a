// CaptionModel: an Encoder, a decoder (Show and Tell's Decoder or the AttentionDecoder), the
// Vocabulary their ids come from and the image transform they expect, saved together in one
// `.imcap` file (docs/model-format.md).
//
//   imcap::ModelConfig config;
//   config.encoder.arch = imcap::ResNetArch::kResNet18;
//   imcap::CaptionModel model(config, vocab);
//   model.save("model.imcap");
//   imcap::CaptionModel again = imcap::CaptionModel::load("model.imcap");
#pragma once

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <torch/types.h>

#include "imcap/attention_decoder.hpp"
#include "imcap/decoder.hpp"
#include "imcap/encoder.hpp"
#include "imcap/image.hpp"
#include "imcap/vocabulary.hpp"
#include "imcap/weights.hpp"

namespace imcap {

/// The newest version of the `.imcap` format this build writes (1 for Show and Tell models, 2
/// for attention models); it reads versions 1 to this one.
inline constexpr int kModelFormatVersion = 2;

/// Which decoder a model has.
enum class DecoderKind {
  kShowTell,   ///< `Decoder`: the image as one vector (Show and Tell, the notebooks)
  kAttention,  ///< `AttentionDecoder`: soft attention over the CNN's grid (Show, Attend and Tell)
};

/// Parses "show-tell" or "attention"; throws InvalidArgument otherwise.
DecoderKind parse_decoder_kind(const std::string& name);
/// "show-tell" or "attention".
std::string to_string(DecoderKind kind);

/// Everything that defines a captioning model besides its weights and vocabulary.
struct ModelConfig {
  EncoderOptions encoder;  ///< backbone, embedding size, head batch-norm, trainable stages
  /// Which decoder: `decoder` or `attention` configures it. Default kShowTell.
  DecoderKind decoder_kind = DecoderKind::kShowTell;
  DecoderOptions decoder;  ///< kShowTell; vocab_size is set from the vocabulary by CaptionModel
  /// kAttention. CaptionModel sets vocab_size, encoder_dim (the CNN's channels) and start_id
  /// from the vocabulary and the backbone, and builds the encoder without a head.
  AttentionDecoderOptions attention;
  /// kAttention: the side S of the grid the decoder sees, the CNN's map average-pooled to S x S
  /// (sgrvinod's 14); 0 (default) keeps the map as it is (7 x 7 at 224 px).
  int64_t grid = 0;
  int image_resize =
      256;               ///< shorter side before the centre crop at inference, pixels. Default 256.
  int image_crop = 224;  ///< side of the crop the encoder sees, pixels. Default 224.
  std::array<float, 3> mean = kImageNetMean;  ///< normalisation mean per channel
  std::array<float, 3> std = kImageNetStd;    ///< normalisation std per channel
};

/// ModelConfig as JSON text, and back. from_json throws FormatError naming `name` and the key.
std::string model_config_to_json(const ModelConfig& config);
ModelConfig model_config_from_json(const std::string& json, const std::string& name);

/// What a checkpoint holds beside the model (imcap/checkpoint.hpp).
struct TrainingState;

/// Teacher-forced logits and the targets they score (CaptionModel::teacher_forced):
/// caption_loss(logits, targets, lengths) is the mean cross-entropy over the captions' targets.
struct TeacherForced {
  torch::Tensor logits;   ///< (B, T', V)
  torch::Tensor targets;  ///< (B, T') int64
  torch::Tensor lengths;  ///< (B): targets per caption
};

/// An encoder and a decoder with their vocabulary and image transform.
///
/// The methods below the accessors hide which decoder the model has: what the encoder gives the
/// decoder ("features": the embedded vector (B, E) for Show and Tell, the grid (B, P, C) for
/// attention), the training losses, and the decoder as a StepDecoder for the searches.
class CaptionModel {
 public:
  /// Builds freshly initialised modules. Sets config.decoder.vocab_size = vocab.size() and
  /// config.decoder.embed_size = config.encoder.embed_size (Show and Tell), or the attention
  /// options' vocab_size, encoder_dim and start_id and config.encoder.embed_size = 0
  /// (attention). Throws InvalidArgument on bad options.
  CaptionModel(ModelConfig config, Vocabulary vocab);

  /// Loads a `.imcap` file onto `device`. Validates the format version, the configuration,
  /// the vocabulary and every weight's name and shape; throws IoError or FormatError naming the
  /// file and the problem. Fills *training when given (empty when the file holds no training
  /// state; load_checkpoint in imcap/checkpoint.hpp reads it as a Checkpoint).
  static CaptionModel load(const std::string& path, const torch::Device& device = torch::kCPU,
                           TrainingState* training = nullptr);
  /// Writes the model (and optional training state) crash-safely: temporary file, fsync, rename.
  void save(const std::string& path, const TrainingState* training = nullptr) const;

  /// Moves both modules to a device.
  void to(const torch::Device& device);
  /// The device the weights are on.
  torch::Device device() const;
  /// Puts both modules in training or evaluation mode (frozen stages stay in eval).
  void train(bool on = true);

  /// The evaluation transform the model expects (resize, centre crop, normalise).
  ImageTransform eval_transform() const;

  const ModelConfig& config() const { return config_; }
  const Vocabulary& vocab() const { return vocab_; }
  DecoderKind decoder_kind() const { return config_.decoder_kind; }
  Encoder& encoder() { return encoder_; }
  const Encoder& encoder() const { return encoder_; }
  /// The Show and Tell decoder; throws InvalidArgument for an attention model.
  Decoder& decoder();
  const Decoder& decoder() const;
  /// The attention decoder; throws InvalidArgument for a Show and Tell model.
  AttentionDecoder& attention_decoder();
  const AttentionDecoder& attention_decoder() const;
  /// The decoder as a module, whichever it is (its parameters, train/eval, state dict).
  torch::nn::Module& decoder_module();
  const torch::nn::Module& decoder_module() const;

  /// The decoder's input from images (B, 3, H, W): Encoder::forward (B, E), or the grid
  /// Encoder::forward_spatial(images, config().grid) (B, P, C). compute_dtype: see
  /// ResNetImpl::forward_features.
  torch::Tensor encode(const torch::Tensor& images,
                       std::optional<torch::Dtype> compute_dtype = std::nullopt);
  /// The decoder's input from cached CNN features: pooled (B, C) through the head (Show and
  /// Tell), or a map (B, C, h, w) or grid (B, P, C) as the grid (attention). Throws
  /// InvalidArgument naming the shape the model needs.
  torch::Tensor encode_cached(const torch::Tensor& features);
  /// The decoder as a StepDecoder for the searches and sampling (it shares the modules).
  /// `weights`: the Show and Tell decoder's DecodeWeights; the attention decoder runs float32.
  std::shared_ptr<StepDecoder> step_decoder(DecodeWeights weights = DecodeWeights::kFloat32) const;
  /// The training loss on features from encode(): Decoder::loss or AttentionDecoder::loss (with
  /// its attention penalty, times `penalty_scale`).
  torch::Tensor loss(const torch::Tensor& features, const torch::Tensor& captions,
                     const torch::Tensor& lengths, double penalty_scale = 1.0);
  /// Self-critical training's loss: the decoder's weighted_loss.
  torch::Tensor weighted_loss(const torch::Tensor& features, const torch::Tensor& captions,
                              const torch::Tensor& lengths, const torch::Tensor& weights);
  /// Teacher-forced logits with their targets: Show and Tell's logits[:, t] score captions[:, t]
  /// (lengths as given); the attention decoder's score captions[:, t + 1] (lengths - 1).
  TeacherForced teacher_forced(const torch::Tensor& features, const torch::Tensor& captions,
                               const torch::Tensor& lengths);

 private:
  ModelConfig config_;
  Vocabulary vocab_;
  Encoder encoder_{nullptr};
  Decoder decoder_{nullptr};                     // kShowTell
  AttentionDecoder attention_decoder_{nullptr};  // kAttention
};

}  // namespace imcap
