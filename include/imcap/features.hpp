// CNN features of every image of a COCO annotation file (`imcap features`): computed once, they
// let the decoder (and the embedding head) train without running the CNN each epoch. Pooled
// features ([N, C]) serve Show and Tell; spatial ones ([N, P, C], FeatureOptions::spatial), the
// attention decoder.
//
//   imcap::ResNet cnn(imcap::ResNetOptions{imcap::ResNetArch::kResNet152});
//   auto set = imcap::extract_features(cnn, annotations, "val2014/", {});
//   imcap::save_features("val2014-resnet152.safetensors", set);
#pragma once

#include <optional>
#include <string>

#include <torch/types.h>

#include "imcap/coco_dataset.hpp"
#include "imcap/encoder.hpp"

namespace imcap {

/// Options of extract_features.
struct FeatureOptions {
  int crop = 224;         ///< side of the centre crop the CNN sees, pixels. Default 224.
  int resize = 256;       ///< shorter side before cropping, pixels. Default 256.
  int batch_size = 32;    ///< images per forward pass. Default 32.
  int workers = 2;        ///< image decoding threads. Default 2.
  bool progress = false;  ///< print progress to stderr. Default false.
  /// Arithmetic type of the CNN (see ResNetImpl::forward_features), e.g. torch::kBFloat16 on
  /// a GPU. The features are saved as float32 either way. Default: the weights' type.
  std::optional<torch::Dtype> compute_dtype = std::nullopt;
  /// The last stage's map as a grid of P positions per image (Encoder::forward_spatial's),
  /// for attention models, instead of its average. Default false.
  bool spatial = false;
  /// With spatial: pool the map adaptively to grid x grid first (0: the map as it is, 7 x 7
  /// at 224 px). Default 0.
  int grid = 0;
  /// With spatial: the type the grid is stored in, torch::kHalf (default), kBFloat16 or kFloat.
  /// 16 bits halve the memory and the disk: COCO's 123,287 images at 7 x 7 x 2048 take 24.7 GB
  /// instead of 49.5 GB. Pooled features are always float32.
  torch::Dtype spatial_dtype = torch::kHalf;
};

/// Features of a set of images.
struct FeatureSet {
  /// [N, C] float32, average-pooled last-stage features, or with FeatureOptions::spatial
  /// [N, P, C] grids in FeatureOptions::spatial_dtype.
  torch::Tensor features;
  torch::Tensor image_ids;  ///< [N] int64 COCO image ids, in the annotation file's order
  /// Whether the features are grids [N, P, C].
  bool spatial() const { return features.dim() == 3; }
};

/// Runs the backbone (in eval mode, without gradients) over every image of `annotations`
/// with the evaluation transform. Throws IoError/FormatError naming an unreadable image. On a
/// GPU, batches go through page-locked memory and the next batch is decoded while the
/// device computes the current one.
FeatureSet extract_features(ResNet& backbone, const CocoAnnotations& annotations,
                            const std::string& image_root, const FeatureOptions& options = {});

/// Writes a FeatureSet as safetensors (tensors "features", in their type, and "image_ids"),
/// crash-safely.
void save_features(const std::string& path, const FeatureSet& set);
/// Reads and validates a FeatureSet written by save_features (or any safetensors file with a
/// float "features", [N, C] or [N, P, C], and an int64 [N] "image_ids"); throws FormatError
/// otherwise. Pooled features are returned as float32, grids in the file's type. The whole
/// file is read into memory.
FeatureSet load_features(const std::string& path);

}  // namespace imcap
