// The image encoder: torchvision's ResNets as LibTorch modules, and the captioning Encoder
// (backbone + `embed` Linear + optional BatchNorm1d) of the Show and Tell notebooks.
//
// Registered names equal torchvision's, so a torchvision state dict maps one to one onto
// `ResNet` (`conv1.weight`, `layer3.35.bn2.running_var`, `fc.bias`) and, with the prefix
// `backbone.`, onto `Encoder`. See docs/models.md.
//
//   imcap::Encoder encoder(imcap::EncoderOptions{});   // ResNet-50, frozen, embed 256
//   encoder->eval();
//   torch::Tensor e = encoder->forward(images);         // images (B, 3, H, W) -> (B, 256)
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace imcap {

namespace detail {
class ResNetInference;
}  // namespace detail

/// The ResNet depths torchvision ships.
enum class ResNetArch { kResNet18, kResNet34, kResNet50, kResNet101, kResNet152 };

/// Parses "resnet18", "resnet34", "resnet50", "resnet101" or "resnet152" (the torchvision
/// names). Throws InvalidArgument naming the value and the valid names otherwise.
ResNetArch parse_resnet_arch(const std::string& name);
/// The torchvision name of an architecture, e.g. "resnet50".
std::string to_string(ResNetArch arch);
/// Channels of the last stage (the pooled feature size): 512 for ResNet-18/34, 2048 otherwise.
int64_t feature_dim(ResNetArch arch);

/// The stages of a ResNet, in order: the stem (conv1 + bn1), layer1, layer2, layer3, layer4.
inline constexpr int kResNetStages = 5;

/// torchvision's BasicBlock (ResNet-18/34): two 3x3 convolutions and a residual connection.
struct BasicBlockImpl : torch::nn::Module {
  static constexpr int64_t kExpansion = 1;
  /// `in_planes` input channels, `planes` output channels, `stride` of the first convolution.
  BasicBlockImpl(int64_t in_planes, int64_t planes, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::Sequential downsample{nullptr};  ///< 1x1 conv + BN, only where the shape changes
};
TORCH_MODULE(BasicBlock);

/// torchvision's Bottleneck (ResNet-50/101/152, "v1.5": the stride sits on the 3x3 conv2).
struct BottleneckImpl : torch::nn::Module {
  static constexpr int64_t kExpansion = 4;
  /// `in_planes` input channels, `planes * 4` output channels, `stride` of conv2.
  BottleneckImpl(int64_t in_planes, int64_t planes, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Sequential downsample{nullptr};  ///< 1x1 conv + BN, only where the shape changes
};
TORCH_MODULE(Bottleneck);

/// Options of a bare ResNet.
struct ResNetOptions {
  /// Depth. Default ResNet-50 (the seed notebook's encoder).
  ResNetArch arch = ResNetArch::kResNet50;
  /// Outputs of the `fc` classifier; 0 (default) builds no `fc` at all.
  int64_t num_classes = 0;
  /// How many of the last stages train (0 to kResNetStages). Frozen stages have
  /// requires_grad=false and stay in eval mode. Default kResNetStages: all train, as torchvision.
  int trainable_stages = kResNetStages;
  /// Zero-initialise the last BN of each residual branch (torchvision's option). Default false.
  bool zero_init_residual = false;
};

/// torchvision's ResNet (conv1, bn1, layer1..layer4, optional fc), initialised as torchvision
/// does (Kaiming-normal fan-out convolutions, BN weight 1 and bias 0).
struct ResNetImpl : torch::nn::Module {
  explicit ResNetImpl(const ResNetOptions& options = {});
  ~ResNetImpl() override;

  /// The last stage's map: images (B, 3, H, W) float -> (B, C, ceil(H/32), ceil(W/32)), in the
  /// images' type. `compute_dtype` (kFloat, kBFloat16 or kHalf; default: the weights' type) is
  /// the type of the convolutions' arithmetic on the inference path (set_fast_inference): the
  /// folded weights are rounded to it once, the activations stay in it, and on a GPU
  /// (channels_last there) 16-bit types run on tensor cores. bfloat16 changes the features as
  /// PyTorch's own bfloat16 forward does (7% of the largest feature for a randomly initialised
  /// ResNet-18). Throws InvalidArgument when it differs from the weights' type and the
  /// inference path does not apply (training, gradients), or for another type.
  torch::Tensor forward_features(const torch::Tensor& images,
                                 std::optional<torch::Dtype> compute_dtype = std::nullopt);
  /// Global average pooled features: images -> (B, C), C = feature_dim().
  torch::Tensor forward_pooled(const torch::Tensor& images,
                               std::optional<torch::Dtype> compute_dtype = std::nullopt);
  /// With `fc`: the classifier's logits (B, num_classes); without: forward_pooled().
  torch::Tensor forward(const torch::Tensor& images);

  /// Freezes all but the last `n` stages (0 to kResNetStages) and unfreezes those.
  void set_trainable_stages(int n);
  int trainable_stages() const { return options_.trainable_stages; }
  /// Sets train/eval mode as torch::nn::Module does, except that frozen stages stay in eval
  /// mode, so their batch-norm statistics never move.
  void train(bool on = true) override;

  const ResNetOptions& options() const { return options_; }
  int64_t feature_dim() const;

  /// Enables (default) or disables the inference path. Forwards that need no gradients with
  /// every stage in eval mode (evaluation, captioning, a frozen backbone during training) then
  /// run convolutions with each batch norm folded in, on CPU with their weights pre-arranged
  /// for oneDNN (when LibTorch has it): the same function, faster. The folded weights are a
  /// second copy of the convolutions' (about the backbone's size in memory), rebuilt
  /// whenever a weight or statistic changes; turning the path off frees them. Thread-safe.
  void set_fast_inference(bool on);
  bool fast_inference() const { return fast_inference_; }
  /// The engine of the inference path (internal: src/detail/resnet_inference.hpp).
  const detail::ResNetInference& inference_engine() const { return *inference_; }

  torch::nn::Conv2d conv1{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};
  torch::nn::Linear fc{nullptr};  ///< only when num_classes > 0

 private:
  /// The modules of stage `i` (0 = stem).
  std::vector<std::shared_ptr<torch::nn::Module>> stage_modules(int i) const;

  ResNetOptions options_;
  // The mode last asked for; is_training() is false when every stage is frozen.
  bool requested_training_ = true;
  bool fast_inference_ = true;
  bool inference_path_applies(const torch::Tensor& images) const;
  std::unique_ptr<detail::ResNetInference> inference_;
};
TORCH_MODULE(ResNet);

/// Options of the captioning Encoder.
struct EncoderOptions {
  /// Backbone depth. Default ResNet-50 (the seed notebook's encoder).
  ResNetArch arch = ResNetArch::kResNet50;
  /// Size E of the embedded image vector (the decoder's word-embedding size). Default 256.
  /// 0 builds no head (`embed`, `bn`): the encoder of an attention model, which reads the grid
  /// (forward_spatial); forward() and embed_features() then throw InvalidArgument.
  int64_t embed_size = 256;
  /// Apply BatchNorm1d(E) after `embed` (the PyTorch tutorial's variant). Default off (the seed).
  bool head_batch_norm = false;
  /// Momentum of that BatchNorm1d. Default 0.01, as in the tutorial.
  double head_batch_norm_momentum = 0.01;
  /// How many of the backbone's last stages train: 0 (default, the seed's frozen CNN) to
  /// kResNetStages (all). The head (`embed`, `bn`) always trains.
  int trainable_stages = 0;
};

/// What Encoder::forward_all returns.
struct EncoderOutput {
  torch::Tensor embedded;  ///< (B, E): the head's output, the decoder's image input (undefined
                           ///< without a head)
  torch::Tensor pooled;    ///< (B, C): average-pooled backbone features, before the head
  torch::Tensor spatial;   ///< (B, C, h, w): the last stage's map (for attention decoders)
};

/// The captioning encoder: `backbone` (ResNet without fc) -> average pool -> `embed` Linear(C, E)
/// -> optional `bn` BatchNorm1d(E). State-dict keys: `backbone.<torchvision names>`,
/// `embed.weight`, `embed.bias`, and with head_batch_norm `bn.weight`, `bn.bias`,
/// `bn.running_mean`, `bn.running_var`, `bn.num_batches_tracked`.
struct EncoderImpl : torch::nn::Module {
  explicit EncoderImpl(const EncoderOptions& options = {});

  /// images (B, 3, H, W) float -> embedded (B, E). compute_dtype: see
  /// ResNetImpl::forward_features (the head computes in the weights' type).
  torch::Tensor forward(const torch::Tensor& images,
                        std::optional<torch::Dtype> compute_dtype = std::nullopt);
  /// Embedded vector, pooled features and spatial map from one backbone pass.
  EncoderOutput forward_all(const torch::Tensor& images,
                            std::optional<torch::Dtype> compute_dtype = std::nullopt);
  /// The last stage's map as a grid of feature vectors for attention decoders: images
  /// (B, 3, H, W) -> (B, P, C), P = h * w positions in row-major order (7 x 7 = 49 for 224-px
  /// images), C = feature_dim(); with grid > 0 the map is first average-pooled adaptively to
  /// grid x grid (sgrvinod's 14 x 14). The head is not applied. Same inference path as forward.
  torch::Tensor forward_spatial(const torch::Tensor& images, int64_t grid = 0,
                                std::optional<torch::Dtype> compute_dtype = std::nullopt);
  /// The head alone: pooled (B, C) -> embedded (B, E). For cached features.
  torch::Tensor embed_features(const torch::Tensor& pooled);

  const EncoderOptions& options() const { return options_; }
  /// C, the pooled feature size of the backbone.
  int64_t feature_dim() const;

  ResNet backbone{nullptr};
  torch::nn::Linear embed{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};  ///< only with head_batch_norm

 private:
  EncoderOptions options_;
};
TORCH_MODULE(Encoder);

/// A spatial map (B, C, h, w) as forward_spatial's grid (B, P, C), average-pooled adaptively to
/// grid x grid first when grid > 0 and the map has another size. Throws InvalidArgument for
/// another shape or a negative grid.
torch::Tensor spatial_grid(const torch::Tensor& map, int64_t grid = 0);

/// Maps a key of the notebooks' EncoderCNN state dict to the Encoder's. Their `resnet` is
/// `nn.Sequential(*list(resnet.children())[:-1])`, so `resnet.0.` -> `backbone.conv1.`,
/// `resnet.1.` -> `backbone.bn1.`, `resnet.4.` .. `resnet.7.` -> `backbone.layer1.` ..
/// `backbone.layer4.`; `embed.` and `bn.` stay; the tutorial's `linear.` -> `embed.`.
/// Throws InvalidArgument naming the key for anything else.
std::string notebook_encoder_key_to_imcap(const std::string& key);
/// notebook_encoder_key_to_imcap applied to every key, in order.
std::vector<std::string> notebook_encoder_keys_to_imcap(const std::vector<std::string>& keys);

}  // namespace imcap
