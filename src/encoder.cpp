#include "imcap/encoder.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <array>
#include <utility>

#include "detail/enum_names.hpp"
#include "detail/resnet_inference.hpp"
#include "detail/tensor_check.hpp"
#include "imcap/error.hpp"

namespace imcap {
namespace {

namespace nn = torch::nn;

struct ArchSpec {
  ResNetArch arch;
  bool bottleneck;
  std::array<int64_t, 4> blocks;  // residual blocks in layer1..layer4
};

// The depths of torchvision's resnet18 .. resnet152 (He et al. 2016, table 1).
constexpr std::array<ArchSpec, 5> kArchSpecs{{
    {ResNetArch::kResNet18, false, {2, 2, 2, 2}},
    {ResNetArch::kResNet34, false, {3, 4, 6, 3}},
    {ResNetArch::kResNet50, true, {3, 4, 6, 3}},
    {ResNetArch::kResNet101, true, {3, 4, 23, 3}},
    {ResNetArch::kResNet152, true, {3, 8, 36, 3}},
}};

const ArchSpec& spec(ResNetArch arch) {
  for (const auto& s : kArchSpecs) {
    if (s.arch == arch) return s;
  }
  throw InvalidArgument(fmt::format("unknown ResNet architecture {}", static_cast<int>(arch)));
}

constexpr int64_t kStemChannels = 64;
constexpr int64_t kLastStagePlanes = 512;

nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false));
}

nn::Conv2d conv1x1(int64_t in, int64_t out, int64_t stride) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false));
}

// The projection shortcut torchvision adds where the residual's shape changes; else empty.
nn::Sequential make_downsample(int64_t in_planes, int64_t out_planes, int64_t stride) {
  if (stride == 1 && in_planes == out_planes) return nn::Sequential(nullptr);
  return nn::Sequential(conv1x1(in_planes, out_planes, stride), nn::BatchNorm2d(out_planes));
}

template <typename Block>
nn::Sequential make_layer(int64_t& in_planes, int64_t planes, int64_t blocks, int64_t stride) {
  nn::Sequential layer;
  for (int64_t i = 0; i < blocks; ++i) {
    layer->push_back(Block(in_planes, planes, i == 0 ? stride : 1));
    in_planes = planes * Block::Impl::kExpansion;
  }
  return layer;
}

void check_images(const torch::Tensor& images) {
  detail::check_tensor(
      images.defined() && images.dim() == 4 && images.size(1) == 3 && images.is_floating_point(),
      "encoder input", "float images of shape (B, 3, H, W)", images);
}

void check_trainable_stages(int n) {
  if (n < 0 || n > kResNetStages) {
    throw InvalidArgument(
        fmt::format("trainable_stages: expected 0 to {}, got {}", kResNetStages, n));
  }
}

}  // namespace

ResNetArch parse_resnet_arch(const std::string& name) {
  return detail::parse_enum<ResNetArch>(name);
}

std::string to_string(ResNetArch arch) { return detail::enum_name(arch); }

int64_t feature_dim(ResNetArch arch) {
  return kLastStagePlanes *
         (spec(arch).bottleneck ? BottleneckImpl::kExpansion : BasicBlockImpl::kExpansion);
}

BasicBlockImpl::BasicBlockImpl(int64_t in_planes, int64_t planes, int64_t stride)
    : conv1(register_module("conv1", conv3x3(in_planes, planes, stride))),
      conv2(register_module("conv2", conv3x3(planes, planes, 1))),
      bn1(register_module("bn1", nn::BatchNorm2d(planes))),
      bn2(register_module("bn2", nn::BatchNorm2d(planes))),
      downsample(make_downsample(in_planes, planes * kExpansion, stride)) {
  if (downsample) register_module("downsample", downsample);
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor out = torch::relu(bn1(conv1(x)));
  out = bn2(conv2(out));
  out += downsample ? downsample->forward(x) : x;
  return torch::relu(out);
}

BottleneckImpl::BottleneckImpl(int64_t in_planes, int64_t planes, int64_t stride)
    : conv1(register_module("conv1", conv1x1(in_planes, planes, 1))),
      conv2(register_module("conv2", conv3x3(planes, planes, stride))),
      conv3(register_module("conv3", conv1x1(planes, planes * kExpansion, 1))),
      bn1(register_module("bn1", nn::BatchNorm2d(planes))),
      bn2(register_module("bn2", nn::BatchNorm2d(planes))),
      bn3(register_module("bn3", nn::BatchNorm2d(planes * kExpansion))),
      downsample(make_downsample(in_planes, planes * kExpansion, stride)) {
  if (downsample) register_module("downsample", downsample);
}

torch::Tensor BottleneckImpl::forward(const torch::Tensor& x) {
  torch::Tensor out = torch::relu(bn1(conv1(x)));
  out = torch::relu(bn2(conv2(out)));
  out = bn3(conv3(out));
  out += downsample ? downsample->forward(x) : x;
  return torch::relu(out);
}

ResNetImpl::ResNetImpl(const ResNetOptions& options)
    : options_(options), inference_(std::make_unique<detail::ResNetInference>()) {
  check_trainable_stages(options.trainable_stages);
  if (options.num_classes < 0) {
    throw InvalidArgument(
        fmt::format("num_classes: expected 0 (no fc) or more, got {}", options.num_classes));
  }
  const ArchSpec& s = spec(options.arch);
  conv1 = register_module(
      "conv1", nn::Conv2d(nn::Conv2dOptions(3, kStemChannels, 7).stride(2).padding(3).bias(false)));
  bn1 = register_module("bn1", nn::BatchNorm2d(kStemChannels));
  int64_t in_planes = kStemChannels;
  const std::array<int64_t, 4> planes{64, 128, 256, kLastStagePlanes};
  std::array<nn::Sequential, 4> layers;
  for (size_t i = 0; i < layers.size(); ++i) {
    const int64_t stride = i == 0 ? 1 : 2;
    layers[i] = s.bottleneck ? make_layer<Bottleneck>(in_planes, planes[i], s.blocks[i], stride)
                             : make_layer<BasicBlock>(in_planes, planes[i], s.blocks[i], stride);
    register_module(fmt::format("layer{}", i + 1), layers[i]);
  }
  layer1 = layers[0];
  layer2 = layers[1];
  layer3 = layers[2];
  layer4 = layers[3];
  if (options.num_classes > 0) {
    fc = register_module("fc", nn::Linear(in_planes, options.num_classes));
  }

  // torchvision's initialisation; fc keeps nn.Linear's default, as in torchvision.
  torch::NoGradGuard no_grad;
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* conv = m->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(conv->weight, /*a=*/0.0, torch::kFanOut, torch::kReLU);
    } else if (auto* bn = m->as<nn::BatchNorm2d>()) {
      nn::init::ones_(bn->weight);
      nn::init::zeros_(bn->bias);
    }
  }
  if (options.zero_init_residual) {
    for (auto& m : modules(/*include_self=*/false)) {
      if (auto* b = m->as<Bottleneck>()) nn::init::zeros_(b->bn3->weight);
      if (auto* b = m->as<BasicBlock>()) nn::init::zeros_(b->bn2->weight);
    }
  }
  set_trainable_stages(options.trainable_stages);
}

std::vector<std::shared_ptr<torch::nn::Module>> ResNetImpl::stage_modules(int i) const {
  switch (i) {
    case 0:
      return {conv1.ptr(), bn1.ptr()};
    case 1:
      return {layer1.ptr()};
    case 2:
      return {layer2.ptr()};
    case 3:
      return {layer3.ptr()};
    default:
      return {layer4.ptr()};
  }
}

void ResNetImpl::set_trainable_stages(int n) {
  check_trainable_stages(n);
  options_.trainable_stages = n;
  for (int i = 0; i < kResNetStages; ++i) {
    const bool trainable = i >= kResNetStages - n;
    for (const auto& m : stage_modules(i)) {
      for (auto& p : m->parameters()) p.set_requires_grad(trainable);
    }
  }
  train(requested_training_);
}

void ResNetImpl::train(bool on) {
  requested_training_ = on;
  // A fully frozen backbone is in eval mode as a whole (fc has no mode-dependent layers).
  torch::nn::Module::train(on && options_.trainable_stages > 0);
  for (int i = 0; i < kResNetStages - options_.trainable_stages; ++i) {
    for (const auto& m : stage_modules(i)) m->train(false);
  }
}

ResNetImpl::~ResNetImpl() = default;

int64_t ResNetImpl::feature_dim() const { return imcap::feature_dim(options_.arch); }

void ResNetImpl::set_fast_inference(bool on) {
  fast_inference_ = on;
  if (!on) inference_->clear();
}

// Whether the folded inference path computes forward_features' function for these images: no
// batch norm in training mode, nothing that needs a gradient.
bool ResNetImpl::inference_path_applies(const torch::Tensor& images) const {
  const bool all_eval = !requested_training_ || options_.trainable_stages == 0;
  if (!fast_inference_ || !all_eval || images.requires_grad() || images.layout() != torch::kStrided)
    return false;
  if (!torch::GradMode::is_enabled()) return true;
  for (const auto& p : parameters())
    if (p.requires_grad()) return false;
  return true;
}

torch::Tensor ResNetImpl::forward_features(const torch::Tensor& images,
                                           std::optional<torch::Dtype> compute_dtype) {
  check_images(images);
  const torch::Dtype weights_dtype = conv1->weight.scalar_type();
  const torch::Dtype dtype = compute_dtype.value_or(weights_dtype);
  // LibTorch's CPU convolutions have no float16 kernels ("slow_conv2d_cpu" not implemented for
  // 'Half'); bfloat16 ones they have.
  if (dtype == torch::kHalf && !conv1->weight.device().is_cuda())
    throw InvalidArgument(fmt::format(
        "encoder compute type float16 needs a CUDA device, the CNN is on the {}: use bfloat16 "
        "there (or float32)",
        conv1->weight.device().str()));
  if (inference_path_applies(images)) return inference_->forward(*this, images, dtype);
  if (dtype != weights_dtype) {
    throw InvalidArgument(fmt::format(
        "encoder compute type {}: only the inference path (no gradients, every stage in eval "
        "mode, set_fast_inference on) computes in another type than the weights' {}",
        c10::toString(dtype), c10::toString(weights_dtype)));
  }
  torch::Tensor x = torch::relu(bn1(conv1(images)));
  x = torch::max_pool2d(x, /*kernel_size=*/3, /*stride=*/2, /*padding=*/1);
  x = layer1->forward(x);
  x = layer2->forward(x);
  x = layer3->forward(x);
  return layer4->forward(x);
}

torch::Tensor ResNetImpl::forward_pooled(const torch::Tensor& images,
                                         std::optional<torch::Dtype> compute_dtype) {
  return forward_features(images, compute_dtype).mean({2, 3});
}

torch::Tensor ResNetImpl::forward(const torch::Tensor& images) {
  torch::Tensor pooled = forward_pooled(images);
  return fc ? fc(pooled) : pooled;
}

EncoderImpl::EncoderImpl(const EncoderOptions& options) : options_(options) {
  if (options.embed_size < 0) {
    throw InvalidArgument(
        fmt::format("embed_size: expected a size >= 0 (0: no head), got {}", options.embed_size));
  }
  ResNetOptions backbone_options;
  backbone_options.arch = options.arch;
  backbone_options.num_classes = 0;
  backbone_options.trainable_stages = options.trainable_stages;
  backbone = register_module("backbone", ResNet(backbone_options));
  if (options.embed_size == 0) return;  // an attention model's encoder: the grid, no head
  embed = register_module("embed", nn::Linear(backbone->feature_dim(), options.embed_size));
  if (options.head_batch_norm) {
    bn = register_module(
        "bn",
        nn::BatchNorm1d(
            nn::BatchNormOptions(options.embed_size).momentum(options.head_batch_norm_momentum)));
  }
}

int64_t EncoderImpl::feature_dim() const { return backbone->feature_dim(); }

namespace {

void require_head(const nn::Linear& embed) {
  if (!embed)
    throw InvalidArgument(
        "encoder: this encoder has no head (embed_size 0, an attention model's): use "
        "forward_spatial");
}

}  // namespace

torch::Tensor EncoderImpl::embed_features(const torch::Tensor& pooled) {
  require_head(embed);
  detail::check_tensor(pooled.defined() && pooled.dim() == 2 && pooled.size(1) == feature_dim() &&
                           pooled.is_floating_point(),
                       "encoder head input", fmt::format("float features (B, {})", feature_dim()),
                       pooled);
  torch::Tensor embedded = embed(pooled);
  return bn ? bn(embedded) : embedded;
}

torch::Tensor EncoderImpl::forward(const torch::Tensor& images,
                                   std::optional<torch::Dtype> compute_dtype) {
  require_head(embed);
  return embed_features(backbone->forward_pooled(images, compute_dtype));
}

EncoderOutput EncoderImpl::forward_all(const torch::Tensor& images,
                                       std::optional<torch::Dtype> compute_dtype) {
  EncoderOutput out;
  out.spatial = backbone->forward_features(images, compute_dtype);
  out.pooled = out.spatial.mean({2, 3});
  if (embed) out.embedded = embed_features(out.pooled);
  return out;
}

torch::Tensor EncoderImpl::forward_spatial(const torch::Tensor& images, int64_t grid,
                                           std::optional<torch::Dtype> compute_dtype) {
  return spatial_grid(backbone->forward_features(images, compute_dtype), grid);
}

torch::Tensor spatial_grid(const torch::Tensor& map, int64_t grid) {
  detail::check_tensor(map.defined() && map.dim() == 4 && map.is_floating_point(), "spatial map",
                       "float features (B, C, h, w)", map);
  if (grid < 0) throw InvalidArgument(fmt::format("grid: expected a size >= 0, got {}", grid));
  torch::Tensor m = map;
  if (grid > 0 && (map.size(2) != grid || map.size(3) != grid))
    m = torch::adaptive_avg_pool2d(map, {grid, grid});
  return m.flatten(/*start_dim=*/2).transpose(1, 2).contiguous();
}

std::string notebook_encoder_key_to_imcap(const std::string& key) {
  // Children of torchvision's ResNet in order: conv1 bn1 relu maxpool layer1..4 avgpool fc.
  static const std::array<std::pair<const char*, const char*>, 9> kRenames{{
      {"resnet.0.", "backbone.conv1."},
      {"resnet.1.", "backbone.bn1."},
      {"resnet.4.", "backbone.layer1."},
      {"resnet.5.", "backbone.layer2."},
      {"resnet.6.", "backbone.layer3."},
      {"resnet.7.", "backbone.layer4."},
      {"embed.", "embed."},
      {"linear.", "embed."},
      {"bn.", "bn."},
  }};
  for (const auto& [from, to] : kRenames) {
    const std::string prefix = from;
    if (key.size() > prefix.size() && key.compare(0, prefix.size(), prefix) == 0) {
      return to + key.substr(prefix.size());
    }
  }
  throw InvalidArgument(fmt::format(
      "notebook encoder key '{}': expected resnet.0., resnet.1., resnet.4. to resnet.7., embed., "
      "linear. or bn. followed by a name",
      key));
}

std::vector<std::string> notebook_encoder_keys_to_imcap(const std::vector<std::string>& keys) {
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const auto& k : keys) out.push_back(notebook_encoder_key_to_imcap(k));
  return out;
}

}  // namespace imcap
