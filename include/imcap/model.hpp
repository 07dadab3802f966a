// CaptionModel: an Encoder, a Decoder, the Vocabulary their ids come from and the image
// transform they expect, saved together in one `.imcap` file (docs/model-format.md).
//
//   imcap::ModelConfig config;
//   config.encoder.arch = imcap::ResNetArch::kResNet18;
//   imcap::CaptionModel model(config, vocab);
//   model.save("model.imcap");
//   imcap::CaptionModel again = imcap::CaptionModel::load("model.imcap");
#pragma once

#include <array>
#include <map>
#include <string>

#include <torch/types.h>

#include "imcap/decoder.hpp"
#include "imcap/encoder.hpp"
#include "imcap/image.hpp"
#include "imcap/vocabulary.hpp"
#include "imcap/weights.hpp"

namespace imcap {

/// The version of the `.imcap` format this build writes; it reads versions 1 to this one.
inline constexpr int kModelFormatVersion = 1;

/// Everything that defines a captioning model besides its weights and vocabulary.
struct ModelConfig {
  EncoderOptions encoder;  ///< backbone, embedding size, head batch-norm, trainable stages
  DecoderOptions decoder;  ///< vocab_size is set from the vocabulary by CaptionModel
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

/// An encoder and a decoder with their vocabulary and image transform.
class CaptionModel {
 public:
  /// Builds freshly initialised modules. Sets config.decoder.vocab_size = vocab.size() and
  /// config.decoder.embed_size = config.encoder.embed_size. Throws InvalidArgument on bad options.
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
  Encoder& encoder() { return encoder_; }
  Decoder& decoder() { return decoder_; }
  const Encoder& encoder() const { return encoder_; }
  const Decoder& decoder() const { return decoder_; }

 private:
  ModelConfig config_;
  Vocabulary vocab_;
  Encoder encoder_{nullptr};
  Decoder decoder_{nullptr};
};

}  // namespace imcap
