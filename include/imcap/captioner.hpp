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

/// How captions are made: the search (SearchOptions: beam 3, max_length 20, no <unk>) and how the
/// model runs. The special tokens come from the model's vocabulary.
struct CaptionOptions : SearchOptions {
  /// Storage of the output projection while decoding (see DecodeWeights): kBFloat16 or kInt8
  /// decode faster on a CPU with the same greedy words. Default kFloat32.
  DecodeWeights decode_weights = DecodeWeights::kFloat32;
  /// Arithmetic type of the CNN (see ResNetImpl::forward_features): torch::kBFloat16 or
  /// torch::kHalf run a GPU's tensor cores; the features change as with PyTorch's bfloat16.
  /// Default: the weights' type (float32).
  std::optional<torch::Dtype> encoder_dtype = std::nullopt;
  /// Attention models only: fill Caption::attention with each word's attention weights. The
  /// search is unchanged; the weights come from running the found words back through the
  /// decoder. Default false (true with a Show-and-Tell model throws InvalidArgument).
  bool attention_weights = false;
};

/// One caption.
struct Caption {
  std::string text;                 ///< the words joined by spaces
  std::vector<std::string> tokens;  ///< the words
  std::vector<std::int64_t> ids;    ///< their ids (no <start>/<end>)
  double log_prob = 0.0;            ///< summed log-probability of the generated tokens
  /// With CaptionOptions::attention_weights: [words, P] float32 on the CPU, row i the weights
  /// over the P = S x S cells of the encoder's grid (row-major, top row first) with which the
  /// decoder predicted word i; each row sums to 1. Undefined otherwise.
  torch::Tensor attention;
};

/// Captions images with a CaptionModel.
///
/// Every input comes alone or as a batch, with the Captioner's options or the call's own:
///
/// | input | one image | a batch (one batched search) |
/// | --- | --- | --- |
/// | an image file | caption(path) | caption_batch(paths) |
/// | a decoded Image | caption(image) | caption_batch(images) |
/// | a transformed tensor | caption(tensor [3, H, W]) | caption_batch(tensor [B, 3, H, W]) |
/// | the encoder's features | | caption_features(features [B, E], or the grid [B, P, C] of an
/// attention model) |
///
/// Each takes an optional CaptionOptions last. encode() gives the features of the first three
/// kinds, and candidates() the options.num_return best captions per image from features.
///
/// Greedy search (beam 1) on a CUDA device replays the decoding loop from CUDA graphs, one per
/// batch size and options, with the same captions as the step-by-step search.
class Captioner {
 public:
  /// Loads a `.imcap` model file onto `device` (see CaptionModel::load for the errors).
  static Captioner load(const std::string& path, const torch::Device& device = torch::kCPU,
                        CaptionOptions options = {});
  /// Wraps an existing model (shared: training code can caption with the model it trains).
  /// Throws InvalidArgument for bad options.
  explicit Captioner(std::shared_ptr<CaptionModel> model, CaptionOptions options = {});
  ~Captioner();
  Captioner(const Captioner&);
  Captioner(Captioner&&) noexcept;
  Captioner& operator=(const Captioner&);
  Captioner& operator=(Captioner&&) noexcept;

  /// Decodes an image file and captions it. Throws IoError/FormatError naming the file.
  Caption caption(const std::string& image_path) const;
  Caption caption(const std::string& image_path, const CaptionOptions& options) const;
  /// Captions a decoded image (the model's eval transform is applied).
  Caption caption(const Image& image) const;
  Caption caption(const Image& image, const CaptionOptions& options) const;
  /// Captions an image tensor that is already transformed: [3, H, W] float.
  Caption caption(const torch::Tensor& image) const;
  Caption caption(const torch::Tensor& image, const CaptionOptions& options) const;

  /// Several image files in one batched search; results in the same order.
  std::vector<Caption> caption_batch(const std::vector<std::string>& image_paths) const;
  std::vector<Caption> caption_batch(const std::vector<std::string>& image_paths,
                                     const CaptionOptions& options) const;
  /// Decoded images in one batched search.
  std::vector<Caption> caption_batch(const std::vector<Image>& images) const;
  std::vector<Caption> caption_batch(const std::vector<Image>& images,
                                     const CaptionOptions& options) const;
  /// Transformed image tensors [B, 3, H, W] in one batched search.
  std::vector<Caption> caption_batch(const torch::Tensor& images) const;
  std::vector<Caption> caption_batch(const torch::Tensor& images,
                                     const CaptionOptions& options) const;
  /// Captions from the encoder's features: CaptionModel::encode's [B, E], or [B, P, C] for an
  /// attention model.
  std::vector<Caption> caption_features(const torch::Tensor& features) const;
  std::vector<Caption> caption_features(const torch::Tensor& features,
                                        const CaptionOptions& options) const;

  /// The options.num_return best captions of each image (at most options.beam_size), best
  /// first, from the encoder's features (see caption_features).
  std::vector<std::vector<Caption>> candidates(const torch::Tensor& features,
                                               const CaptionOptions& options) const;

  /// The encoder's features (CaptionModel::encode: [B, E], or an attention model's grid
  /// [B, P, C]) of image files, decoded images, or transformed tensors [B, 3, H, W], on the
  /// model's device (options.encoder_dtype applies).
  torch::Tensor encode(const std::vector<std::string>& image_paths,
                       const CaptionOptions& options) const;
  torch::Tensor encode(const std::vector<Image>& images, const CaptionOptions& options) const;
  torch::Tensor encode(const torch::Tensor& images, const CaptionOptions& options) const;

  const CaptionModel& model() const { return *model_; }
  const CaptionOptions& options() const { return options_; }

 private:
  struct GraphCache;
  void add_attention_weights(const torch::Tensor& features,
                             std::vector<std::vector<Caption>>& captions) const;
  std::shared_ptr<CaptionModel> model_;
  CaptionOptions options_;
  ImageTransform transform_;
  std::unique_ptr<GraphCache> graphs_;  // CUDA-graph greedy engines, built on first use
};

}  // namespace imcap
