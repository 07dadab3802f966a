// Captioner: the one-call API. Load a model file, caption images.
//
//   #include <imcap/captioner.hpp>
//
//   auto captioner = imcap::Captioner::load("model.imcap");        // or (path, torch::kCUDA)
//   imcap::Caption c = captioner.caption("dog.jpg");
//   std::cout << c.text << "  (log p = " << c.log_prob << ")\n";
//
//   imcap::CaptionOptions options;
//   options.beam_size = 5;
//   auto many = captioner.caption_batch({"a.jpg", "b.png"}, options);
//
// One Captioner may be shared by several threads: every method is const and keeps no per-call
// state, and the model stays in evaluation mode.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "imcap/image.hpp"
#include "imcap/model.hpp"
#include "imcap/search.hpp"

namespace imcap {

/// How captions are searched.
struct CaptionOptions {
  int beam_size = 3;       ///< beams per image; 1 = greedy. Default 3.
  int max_length = 20;     ///< most tokens generated, the seed's max_len. Default 20.
  double alpha = 0.0;      ///< length normalisation: score = log p / length^alpha. Default 0.
  bool forbid_unk = true;  ///< never output <unk>. Default true.
  /// Storage of the output projection while decoding (see DecodeWeights): kBFloat16 or kInt8
  /// decode faster on a CPU with the same greedy words. Default kFloat32.
  DecodeWeights decode_weights = DecodeWeights::kFloat32;
  /// Arithmetic type of the CNN (see ResNetImpl::forward_features): torch::kBFloat16 or
  /// torch::kHalf run a GPU's tensor cores; the features change as with PyTorch's bfloat16.
  /// Default: the weights' type (float32).
  std::optional<torch::Dtype> encoder_dtype = std::nullopt;
};

/// One caption.
struct Caption {
  std::string text;                 ///< the words joined by spaces
  std::vector<std::string> tokens;  ///< the words
  std::vector<std::int64_t> ids;    ///< their ids (no <start>/<end>)
  double log_prob = 0.0;            ///< summed log-probability of the generated tokens
};

/// Captions images with a CaptionModel.
class Captioner {
 public:
  /// Loads a `.imcap` model file onto `device` (see CaptionModel::load for the errors).
  static Captioner load(const std::string& path, const torch::Device& device = torch::kCPU,
                        CaptionOptions options = {});
  /// Wraps an existing model (shared: training code can caption with the model it trains).
  explicit Captioner(std::shared_ptr<CaptionModel> model, CaptionOptions options = {});

  /// Decodes an image file and captions it. Throws IoError/FormatError naming the file.
  Caption caption(const std::string& image_path) const;
  /// Captions a decoded image (the model's eval transform is applied).
  Caption caption(const Image& image) const;
  /// Captions an image tensor that is already transformed: [3, H, W] float.
  Caption caption(const torch::Tensor& image) const;
  /// Several image files in one batched search; results in the same order.
  std::vector<Caption> caption_batch(const std::vector<std::string>& image_paths) const;
  std::vector<Caption> caption_batch(const std::vector<std::string>& image_paths,
                                     const CaptionOptions& options) const;
  /// Decoded images in one batched search.
  std::vector<Caption> caption_batch(const std::vector<Image>& images) const;
  /// Transformed image tensors [B, 3, H, W] in one batched search.
  std::vector<Caption> caption_tensor_batch(const torch::Tensor& images,
                                            const CaptionOptions& options) const;
  /// Captions from embedded image features [B, E] (the encoder's output).
  std::vector<Caption> caption_features(const torch::Tensor& features,
                                        const CaptionOptions& options) const;

  const CaptionModel& model() const { return *model_; }
  const CaptionOptions& options() const { return options_; }

 private:
  std::shared_ptr<CaptionModel> model_;
  CaptionOptions options_;
  ImageTransform transform_;
};

/// Adapts a Decoder to the StepDecoder interface of the searches (state: h, c and, for
/// par-inject models, the image feature). On the CPU, step() checks the tokens against the
/// vocabulary (Decoder::step); on a GPU it does not, since that check would make the host
/// wait for the device at every step: pass only ids below the vocabulary size there.
class DecoderStepper : public StepDecoder {
 public:
  explicit DecoderStepper(Decoder decoder, DecodeWeights weights = DecodeWeights::kFloat32)
      : decoder_(std::move(decoder)), weights_(weights) {}
  StepStart start(const at::Tensor& features) const override;
  at::Tensor step(const at::Tensor& tokens, SearchState& state) const override;

 private:
  Decoder decoder_;
  DecodeWeights weights_;
};

/// The SearchOptions that CaptionOptions and a vocabulary imply.
SearchOptions search_options(const CaptionOptions& options, const Vocabulary& vocab);

}  // namespace imcap
