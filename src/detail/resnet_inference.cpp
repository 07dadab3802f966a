// The folded ResNet inference engine (detail/resnet_inference.hpp).
#include "detail/resnet_inference.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <utility>
#include <vector>

#include "imcap/error.hpp"

namespace imcap::detail {
namespace {

namespace nn = torch::nn;

// A convolution with its batch norm folded in: y = conv(x, W * s) + (beta - mean * s), where
// s = gamma / sqrt(var + eps), per output channel.
struct FoldedConv {
  torch::Tensor weight;  // dense, or pre-arranged for oneDNN
  torch::Tensor bias;
  std::vector<int64_t> stride, padding;
};

struct FoldedBlock {
  std::vector<FoldedConv> convs;  // conv1, conv2 (, conv3 for a bottleneck)
  bool has_downsample = false;
  FoldedConv downsample;
};

// What a plan was computed from: every parameter and buffer, with its version counter (bumped
// by every in-place change: optimizer steps, copy_, running statistics).
struct TensorStamp {
  const void* impl;
  const void* data;
  int64_t version;
  bool operator==(const TensorStamp& o) const {
    return impl == o.impl && data == o.data && version == o.version;
  }
};

// How a plan stores its folded weights and runs its activations.
struct PlanFormat {
  torch::Dtype dtype = torch::kFloat;  // of the folded weights and the activations
  bool mkldnn = false;                 // weights pre-arranged for oneDNN; activations in its layout
  bool channels_last = false;          // NHWC weights and activations (cuDNN's tensor cores)
  bool fused_cudnn = false;            // conv + bias + ReLU (+ residual) in one cuDNN call each
};

// The slot of a compute type in the inference cache.
std::size_t plan_slot(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat:
      return 0;
    case torch::kBFloat16:
      return 1;
    case torch::kHalf:
      return 2;
    default:
      throw InvalidArgument(fmt::format(
          "encoder compute type {}: expected float32, bfloat16 or float16", c10::toString(dtype)));
  }
}

FoldedConv fold(const nn::Conv2d& conv, const nn::BatchNorm2d& bn, const PlanFormat& format) {
  torch::NoGradGuard no_grad;
  FoldedConv f;
  const int64_t k = conv->weight.size(2);
  const int64_t stride = (*conv->options.stride())[0];
  f.stride = {stride, stride};
  f.padding = {k / 2, k / 2};  // the convolutions of a ResNet pad by half their kernel
  const auto w = conv->weight.to(torch::kFloat);
  const auto scale = bn->weight.to(torch::kFloat) *
                     torch::rsqrt(bn->running_var.to(torch::kFloat) + bn->options.eps());
  // Folded in float32 whatever the storage, then rounded once to the plan's type.
  f.weight = (w * scale.view({-1, 1, 1, 1})).to(format.dtype).contiguous();
  f.bias =
      (bn->bias.to(torch::kFloat) - bn->running_mean.to(torch::kFloat) * scale).to(format.dtype);
  if (format.channels_last) f.weight = f.weight.contiguous(at::MemoryFormat::ChannelsLast);
  if (format.mkldnn) {
    f.weight = at::mkldnn_reorder_conv2d_weight(f.weight.to_mkldnn(), f.padding, f.stride,
                                                /*dilation=*/{1, 1}, /*groups=*/1);
    f.bias = f.bias.to_mkldnn();
  }
  return f;
}

FoldedBlock fold_block(torch::nn::Module& block, const PlanFormat& format) {
  FoldedBlock b;
  nn::Sequential downsample{nullptr};
  if (auto* bottleneck = block.as<BottleneckImpl>()) {
    b.convs = {fold(bottleneck->conv1, bottleneck->bn1, format),
               fold(bottleneck->conv2, bottleneck->bn2, format),
               fold(bottleneck->conv3, bottleneck->bn3, format)};
    downsample = bottleneck->downsample;
  } else if (auto* basic = block.as<BasicBlockImpl>()) {
    b.convs = {fold(basic->conv1, basic->bn1, format), fold(basic->conv2, basic->bn2, format)};
    downsample = basic->downsample;
  } else {
    throw InvalidArgument("ResNet: a stage holds something other than residual blocks");
  }
  if (downsample) {
    b.has_downsample = true;
    b.downsample =
        fold(nn::Conv2d(std::dynamic_pointer_cast<nn::Conv2dImpl>(downsample->ptr(0))),
             nn::BatchNorm2d(std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(downsample->ptr(1))),
             format);
  }
  return b;
}

struct FoldedPlan {
  PlanFormat format;
  FoldedConv stem;
  std::vector<FoldedBlock> blocks;
  std::vector<TensorStamp> stamps;
};

torch::Tensor run(const FoldedConv& c, const torch::Tensor& x, bool mkldnn) {
  if (mkldnn)
    return at::mkldnn_convolution(x, c.weight, c.bias, c.padding, c.stride, /*dilation=*/{1, 1},
                                  /*groups=*/1);
  return at::conv2d(x, c.weight, c.bias, c.stride, c.padding);
}

// relu(conv(x) + bias): on a GPU one cuDNN call, where conv then relu_ reads and writes the
// activations twice.
torch::Tensor run_relu(const FoldedConv& c, const torch::Tensor& x, const PlanFormat& format) {
  if (format.fused_cudnn)
    return at::cudnn_convolution_relu(x, c.weight, c.bias, c.stride, c.padding,
                                      /*dilation=*/{1, 1}, /*groups=*/1);
  return run(c, x, format.mkldnn).relu_();
}

// relu(conv(x) + bias + z), the end of a residual block.
torch::Tensor run_add_relu(const FoldedConv& c, const torch::Tensor& x, const torch::Tensor& z,
                           const PlanFormat& format) {
  if (format.fused_cudnn)
    return at::cudnn_convolution_add_relu(x, c.weight, z, /*alpha=*/1, c.bias, c.stride, c.padding,
                                          /*dilation=*/{1, 1}, /*groups=*/1);
  torch::Tensor out = run(c, x, format.mkldnn);
  out.add_(z);
  return out.relu_();
}

// Whether cuDNN's fused convolutions run on `device` in `dtype` (channels_last) and agree with
// the unfused ones: they depend on the cuDNN version and the card, so a small case is checked
// once per plan, and the plan does without them otherwise.
bool fused_cudnn_works(const torch::Device& device, torch::Dtype dtype) {
  if (!device.is_cuda() || !at::globalContext().userEnabledCuDNN()) return false;
  try {
    torch::NoGradGuard no_grad;
    const auto options = torch::TensorOptions().device(device).dtype(dtype);
    const auto nhwc = at::MemoryFormat::ChannelsLast;
    const torch::Tensor x = torch::randn({2, 16, 8, 8}, options).contiguous(nhwc);
    const torch::Tensor z = torch::randn({2, 16, 8, 8}, options).contiguous(nhwc);
    const torch::Tensor w = (torch::randn({16, 16, 3, 3}, options) * 0.1).contiguous(nhwc);
    const torch::Tensor b = torch::randn({16}, options);
    const torch::Tensor plain = at::conv2d(x, w, b, /*stride=*/{1, 1}, /*padding=*/{1, 1});
    const torch::Tensor relu = at::cudnn_convolution_relu(x, w, b, {1, 1}, {1, 1}, {1, 1}, 1);
    const torch::Tensor add_relu =
        at::cudnn_convolution_add_relu(x, w, z, /*alpha=*/1, b, {1, 1}, {1, 1}, {1, 1}, 1);
    auto close = [](const torch::Tensor& got, const torch::Tensor& want) {
      const double scale = want.abs().max().item<double>() + 1.0;
      return (got.to(torch::kFloat) - want.to(torch::kFloat)).abs().max().item<double>() <
             0.05 * scale;
    };
    return close(relu, plain.relu()) && close(add_relu, (plain + z).relu());
  } catch (const std::exception&) {
    return false;
  }
}

// The backbone's forward_features with folded convolutions, in the plan's type; the result has
// the images' type.
torch::Tensor forward_folded(const FoldedPlan& plan, const torch::Tensor& images) {
  const bool mk = plan.format.mkldnn;
  torch::Tensor x = images.to(plan.format.dtype);
  if (mk) {
    x = x.contiguous().to_mkldnn();
  } else if (plan.format.channels_last) {
    x = x.contiguous(at::MemoryFormat::ChannelsLast);
  }
  const PlanFormat& f = plan.format;
  x = run_relu(plan.stem, x, f);
  // On a oneDNN tensor the pooling is called by its own name. at::max_pool2d is a composite
  // operator; LibTorch 2.x builds with a Vulkan kernel of it (Debian's 2.6) make its entry for
  // the AutogradOther key, which oneDNN tensors dispatch to, ambiguous, and it fails with
  // "INTERNAL ASSERT FAILED ... registered to both CompositeImplicitAutograd and a backend
  // mapped to AutogradOther". mkldnn_max_pool2d is what the composite runs for them anyway.
  x = mk ? at::mkldnn_max_pool2d(x, /*kernel_size=*/{3, 3}, /*stride=*/{2, 2}, /*padding=*/{1, 1})
         : at::max_pool2d(x, /*kernel_size=*/{3, 3}, /*stride=*/{2, 2}, /*padding=*/{1, 1});
  for (const FoldedBlock& b : plan.blocks) {
    torch::Tensor out = x;
    for (std::size_t i = 0; i + 1 < b.convs.size(); ++i) out = run_relu(b.convs[i], out, f);
    const torch::Tensor shortcut = b.has_downsample ? run(b.downsample, x, mk) : x;
    x = run_add_relu(b.convs.back(), out, shortcut, f);
  }
  if (mk) x = x.to_dense();
  return x.to(images.scalar_type());
}

// Every parameter and buffer of the module, stamped.
std::vector<TensorStamp> stamps_of(const torch::nn::Module& module) {
  std::vector<TensorStamp> stamps;
  for (const auto& list : {module.parameters(), module.buffers()})
    for (const auto& t : list)
      stamps.push_back({t.unsafeGetTensorImpl(), t.data_ptr(), t._version()});
  return stamps;
}

}  // namespace

struct ResNetInference::Plan : FoldedPlan {};

ResNetInference::ResNetInference() = default;
ResNetInference::~ResNetInference() = default;

torch::Tensor ResNetInference::forward(const ResNetImpl& resnet, const torch::Tensor& images,
                                       torch::Dtype dtype) {
  const std::size_t slot = plan_slot(dtype);
  std::vector<TensorStamp> stamps = stamps_of(resnet);
  std::shared_ptr<const Plan> plan;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    plan = plans_[slot];
    if (!plan || plan->stamps != stamps) {
      auto p = std::make_shared<Plan>();
      const torch::Device device = resnet.conv1->weight.device();
      p->format.dtype = dtype;
      p->format.mkldnn = at::hasMKLDNN() && device.is_cpu() && dtype == torch::kFloat;
      // cuDNN's tensor-core kernels want NHWC; on the CPU oneDNN has its own layout.
      p->format.channels_last = device.is_cuda();
      p->format.fused_cudnn = p->format.channels_last && fused_cudnn_works(device, dtype);
      p->stem = fold(resnet.conv1, resnet.bn1, p->format);
      for (const auto& layer : {resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4})
        for (const auto& child : layer->children())
          p->blocks.push_back(fold_block(*child, p->format));
      p->stamps = std::move(stamps);
      plans_[slot] = p;
      plan = std::move(p);
    }
  }
  return forward_folded(*plan, images);
}

bool ResNetInference::fused(torch::Dtype dtype) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto& plan = plans_[plan_slot(dtype)];
  return plan && plan->format.fused_cudnn;
}

void ResNetInference::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& plan : plans_) plan.reset();
}

}  // namespace imcap::detail
