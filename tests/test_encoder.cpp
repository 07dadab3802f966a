// The encoder: torchvision's ResNets and the captioning head: names, parity with torchvision,
// freezing, the folded inference path, errors.
#include <torch/torch.h>
#include "catch.hpp"

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "detail/compressed_projection.hpp"
#include "detail/lstm_sequence.hpp"
#include "detail/resnet_inference.hpp"
#include "imcap/captioner.hpp"
#include "imcap/decoder.hpp"
#include "imcap/encoder.hpp"
#include "imcap/error.hpp"
#include "imcap/weights.hpp"
#include "module_support.hpp"
#include "support.hpp"

using namespace imcap::test::modules;  // NOLINT(google-build-using-namespace)

TEST_CASE("architecture names and feature sizes", "[models]") {
  CHECK(imcap::parse_resnet_arch("resnet18") == imcap::ResNetArch::kResNet18);
  CHECK(imcap::parse_resnet_arch("resnet152") == imcap::ResNetArch::kResNet152);
  CHECK(imcap::to_string(imcap::ResNetArch::kResNet101) == "resnet101");
  CHECK(imcap::feature_dim(imcap::ResNetArch::kResNet18) == 512);
  CHECK(imcap::feature_dim(imcap::ResNetArch::kResNet34) == 512);
  CHECK(imcap::feature_dim(imcap::ResNetArch::kResNet50) == 2048);
  CHECK(imcap::feature_dim(imcap::ResNetArch::kResNet152) == 2048);
  CHECK_THROWS_AS(imcap::parse_resnet_arch("resnet19"), imcap::InvalidArgument);
  CHECK_THROWS_WITH(imcap::parse_resnet_arch("ResNet50"), Catch::Contains("'ResNet50'"));
  CHECK(imcap::parse_image_inject("par") == imcap::ImageInject::kPar);
  CHECK(imcap::to_string(imcap::ImageInject::kInit) == "init");
  CHECK_THROWS_AS(imcap::parse_image_inject("post"), imcap::InvalidArgument);
  CHECK_THROWS_WITH(imcap::parse_image_inject("post"),
                    "unknown image inject mode 'post': expected pre, par or init");
  CHECK(imcap::to_string(imcap::DecodeWeights::kBFloat16) == "bfloat16");
}

TEST_CASE("ResNet state-dict names and shapes equal torchvision's", "[models]") {
  TempDir dir;
  python({"names", dir.file("names.json")});
  const auto names = nlohmann::json::parse(imcap::test::read_text(dir.file("names.json")));
  for (const char* arch : {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}) {
    INFO(arch);
    NamedShapes expected;
    for (const auto& item : names.at(arch)) {
      expected.emplace_back(item.at(0).get<std::string>(), item.at(1).get<std::vector<int64_t>>());
    }
    std::sort(expected.begin(), expected.end());
    imcap::ResNetOptions options;
    options.arch = imcap::parse_resnet_arch(arch);
    options.num_classes = 1000;
    CHECK(state_shapes(*imcap::ResNet(options)) == expected);

    // Without fc, the Encoder holds the same under `backbone.`, plus its head.
    imcap::EncoderOptions encoder_options;
    encoder_options.arch = options.arch;
    std::vector<std::string> encoder_expected;
    for (const auto& [name, shape] : expected) {
      if (name.rfind("fc.", 0) != 0) encoder_expected.push_back("backbone." + name);
    }
    encoder_expected.insert(encoder_expected.end(), {"embed.bias", "embed.weight"});
    std::sort(encoder_expected.begin(), encoder_expected.end());
    CHECK(state_names(*imcap::Encoder(encoder_options)) == encoder_expected);
  }

  // The notebooks' EncoderCNN keys map onto the Encoder's, one to one.
  auto mapped = [&](const char* key) {
    auto v = imcap::notebook_encoder_keys_to_imcap(names.at(key).get<std::vector<std::string>>());
    std::sort(v.begin(), v.end());
    return v;
  };
  imcap::EncoderOptions udacity;
  CHECK(mapped("notebook_udacity_resnet50") == state_names(*imcap::Encoder(udacity)));
  imcap::EncoderOptions tutorial;
  tutorial.arch = imcap::ResNetArch::kResNet18;
  tutorial.head_batch_norm = true;
  CHECK(mapped("notebook_tutorial_resnet18") == state_names(*imcap::Encoder(tutorial)));
}

TEST_CASE("notebook encoder keys map to imcap's", "[models]") {
  using imcap::notebook_encoder_key_to_imcap;
  CHECK(notebook_encoder_key_to_imcap("resnet.0.weight") == "backbone.conv1.weight");
  CHECK(notebook_encoder_key_to_imcap("resnet.1.running_var") == "backbone.bn1.running_var");
  CHECK(notebook_encoder_key_to_imcap("resnet.4.0.conv1.weight") ==
        "backbone.layer1.0.conv1.weight");
  CHECK(notebook_encoder_key_to_imcap("resnet.6.35.bn2.running_var") ==
        "backbone.layer3.35.bn2.running_var");
  CHECK(notebook_encoder_key_to_imcap("resnet.7.0.downsample.1.weight") ==
        "backbone.layer4.0.downsample.1.weight");
  CHECK(notebook_encoder_key_to_imcap("embed.weight") == "embed.weight");
  CHECK(notebook_encoder_key_to_imcap("linear.bias") == "embed.bias");
  CHECK(notebook_encoder_key_to_imcap("bn.num_batches_tracked") == "bn.num_batches_tracked");
  CHECK_THROWS_WITH(notebook_encoder_key_to_imcap("resnet.8.weight"),
                    Catch::Contains("'resnet.8.weight'"));
  CHECK_THROWS_AS(notebook_encoder_key_to_imcap("fc.weight"), imcap::InvalidArgument);
  CHECK_THROWS_AS(notebook_encoder_key_to_imcap("resnet.0."), imcap::InvalidArgument);
  CHECK_THROWS_AS(notebook_encoder_key_to_imcap("resnet.10.weight"), imcap::InvalidArgument);
}

TEST_CASE("ResNet-18 and ResNet-50 match torchvision", "[models][parity]") {
  check_resnet_parity("resnet18", /*batch=*/2, /*size=*/224);
  check_resnet_parity("resnet50", /*batch=*/2, /*size=*/224);
}

TEST_CASE("ResNet-152 matches torchvision", "[models][parity][slow]") {
  check_resnet_parity("resnet152", /*batch=*/1, /*size=*/224);
}

TEST_CASE("notebook encoders load through the key mapping and match PyTorch", "[models][parity]") {
  for (const char* variant : {"udacity", "tutorial"}) {
    INFO(variant);
    const std::string arch = std::string(variant) == "udacity" ? "resnet50" : "resnet18";
    TempDir dir;
    python({"notebook-encoder", arch, variant, dir.path()});
    TensorMap weights;
    for (const auto& [key, tensor] : load_tensor_dict(dir.file("weights.pt"))) {
      weights[imcap::notebook_encoder_key_to_imcap(key)] = tensor;
    }
    const TensorMap data = load_tensor_dict(dir.file("data.pt"));
    imcap::EncoderOptions options;
    options.arch = imcap::parse_resnet_arch(arch);
    options.embed_size = 24;
    options.head_batch_norm = std::string(variant) == "tutorial";
    imcap::Encoder encoder(options);
    assign_state(*encoder, weights);
    encoder->eval();
    torch::NoGradGuard no_grad;
    const imcap::EncoderOutput out = encoder->forward_all(data.at("images"));
    CHECK(relative_error(out.pooled, data.at("pooled")) < 1e-4);
    CHECK(relative_error(out.embedded, data.at("embedded")) < 1e-4);
    CHECK(out.spatial.sizes() == torch::IntArrayRef({2, encoder->feature_dim(), 4, 5}));
    CHECK(torch::allclose(encoder->forward(data.at("images")), out.embedded));
  }
}

TEST_CASE("frozen stages keep eval mode and their batch-norm statistics", "[models]") {
  torch::manual_seed(0);
  imcap::EncoderOptions options;
  options.arch = imcap::ResNetArch::kResNet18;
  options.embed_size = 8;
  options.head_batch_norm = true;
  const torch::Tensor images = torch::randn({2, 3, 64, 64});

  SECTION("all frozen (the default)") {
    imcap::Encoder encoder(options);
    encoder->train();
    CHECK(encoder->is_training());
    CHECK(encoder->bn->is_training());
    CHECK_FALSE(encoder->backbone->is_training());
    CHECK_FALSE(encoder->backbone->layer4->is_training());
    const TensorMap before = buffers_copy(*encoder);
    encoder->forward(images).sum().backward();
    CHECK(all_equal(*encoder, before, "backbone."));
    CHECK_FALSE(all_equal(*encoder, before, "bn."));
    CHECK(encoder->embed->weight.grad().defined());
    for (const auto& p : encoder->backbone->parameters()) CHECK_FALSE(p.grad().defined());
    // Unfreezing later follows the mode the encoder was put in.
    encoder->backbone->set_trainable_stages(1);
    CHECK(encoder->backbone->layer4->is_training());
    CHECK_FALSE(encoder->backbone->layer3->is_training());
  }
  SECTION("last stage trains") {
    options.trainable_stages = 1;
    imcap::Encoder encoder(options);
    encoder->train();
    CHECK(encoder->backbone->layer4->is_training());
    CHECK_FALSE(encoder->backbone->layer3->is_training());
    CHECK_FALSE(encoder->backbone->bn1->is_training());
    const TensorMap before = buffers_copy(*encoder);
    encoder->forward(images).sum().backward();
    CHECK(all_equal(*encoder, before, "backbone.layer3."));
    CHECK(all_equal(*encoder, before, "backbone.bn1."));
    CHECK_FALSE(all_equal(*encoder, before, "backbone.layer4."));
    CHECK(encoder->backbone->layer4->parameters().front().grad().defined());
    CHECK_FALSE(encoder->backbone->layer3->parameters().front().grad().defined());
    // Training the backbone directly does not wake its frozen stages either.
    encoder->eval();
    encoder->backbone->train();
    CHECK(encoder->backbone->layer4->is_training());
    CHECK_FALSE(encoder->backbone->layer1->is_training());
  }
}

TEST_CASE("trainable stages set requires_grad", "[models]") {
  for (int n = 0; n <= imcap::kResNetStages; ++n) {
    INFO("trainable_stages " << n);
    imcap::EncoderOptions options;
    options.arch = imcap::ResNetArch::kResNet18;
    options.trainable_stages = n;
    imcap::Encoder encoder(options);
    for (const auto& p : encoder->named_parameters()) {
      INFO(p.key());
      const std::string name = p.key();
      const bool expected =
          name.rfind("backbone.", 0) != 0 || stage_of(name.substr(9)) >= imcap::kResNetStages - n;
      CHECK(p.value().requires_grad() == expected);
    }
  }
  imcap::ResNet resnet(imcap::ResNetOptions{});
  resnet->set_trainable_stages(2);
  CHECK(resnet->layer3->parameters().front().requires_grad());
  CHECK_FALSE(resnet->layer2->parameters().front().requires_grad());
  resnet->set_trainable_stages(imcap::kResNetStages);
  CHECK(resnet->conv1->weight.requires_grad());
  CHECK_THROWS_AS(resnet->set_trainable_stages(6), imcap::InvalidArgument);
  imcap::EncoderOptions bad;
  bad.trainable_stages = -1;
  CHECK_THROWS_AS(imcap::Encoder(bad), imcap::InvalidArgument);
}

TEST_CASE("the encoder's wrong shapes and options give clear errors", "[models]") {
  imcap::EncoderOptions eo;
  eo.arch = imcap::ResNetArch::kResNet18;
  eo.embed_size = 8;
  imcap::Encoder encoder(eo);
  CHECK_THROWS_WITH(encoder->forward(torch::zeros({3, 32, 32})),
                    Catch::Contains("encoder input") && Catch::Contains("(B, 3, H, W)") &&
                        Catch::Contains("[3, 32, 32]"));
  CHECK_THROWS_AS(encoder->forward(torch::zeros({1, 1, 32, 32})), imcap::InvalidArgument);
  CHECK_THROWS_AS(encoder->forward(torch::zeros({1, 3, 32, 32}, torch::kLong)),
                  imcap::InvalidArgument);
  CHECK_THROWS_WITH(encoder->embed_features(torch::zeros({2, 2048})), Catch::Contains("(B, 512)"));
  eo.embed_size = -1;
  CHECK_THROWS_WITH(imcap::Encoder(eo), Catch::Contains("embed_size") && Catch::Contains("-1"));
  eo.embed_size = 0;  // no head: an attention model's encoder gives only the grid
  imcap::Encoder headless(eo);
  CHECK_THROWS_WITH(headless->forward(torch::zeros({1, 3, 32, 32})),
                    Catch::Contains("no head") && Catch::Contains("forward_spatial"));
  CHECK(headless->forward_spatial(torch::zeros({1, 3, 64, 64})).sizes() ==
        torch::IntArrayRef({1, 4, 512}));
}

TEST_CASE("the folded inference path computes the same features as the modules", "[models]") {
  torch::manual_seed(5);
  for (const auto arch : {imcap::ResNetArch::kResNet18, imcap::ResNetArch::kResNet50}) {
    INFO(imcap::to_string(arch));
    imcap::ResNetOptions options;
    options.arch = arch;
    options.trainable_stages = 0;
    imcap::ResNet resnet(options);
    {
      // Batch-norm statistics and affine parameters far from their initial 0 and 1.
      torch::NoGradGuard no_grad;
      for (auto& m : resnet->modules(/*include_self=*/false)) {
        if (auto* bn = m->as<torch::nn::BatchNorm2d>()) {
          bn->weight.uniform_(0.5, 1.5);
          bn->bias.uniform_(-0.2, 0.2);
          bn->running_mean.uniform_(-0.3, 0.3);
          bn->running_var.uniform_(0.5, 2.0);
        }
      }
    }
    resnet->eval();
    const torch::Tensor images = torch::randn({2, 3, 64, 80});
    auto reference = [&] {
      torch::NoGradGuard no_grad;
      resnet->set_fast_inference(false);
      torch::Tensor out = resnet->forward_features(images);
      resnet->set_fast_inference(true);
      return out;
    };
    REQUIRE(resnet->fast_inference());
    torch::Tensor expected = reference();
    {
      torch::NoGradGuard no_grad;
      const torch::Tensor folded = resnet->forward_features(images);
      REQUIRE(folded.sizes() == expected.sizes());
      CHECK(relative_error(folded, expected) < 1e-5);
      CHECK(folded.layout() == torch::kStrided);
      // A changed statistic is seen at the next call: the folded weights are rebuilt.
      resnet->layer1->ptr(0)->named_buffers()["bn1.running_var"].mul_(3.0);
    }
    expected = reference();
    {
      torch::NoGradGuard no_grad;
      CHECK(relative_error(resnet->forward_features(images), expected) < 1e-5);
    }
    {
      // Under InferenceMode too (LibTorch 2.x builds with Vulkan kernels refused the composite
      // max_pool2d on oneDNN tensors, docs/building.md).
      c10::InferenceMode inference;
      CHECK(relative_error(resnet->forward_features(images), expected) < 1e-5);
    }
    // A frozen backbone takes the folded path during training too (autograd on, nothing to
    // differentiate), and gives the same features.
    resnet->train(true);
    const torch::Tensor frozen = resnet->forward_features(images);
    CHECK_FALSE(frozen.requires_grad());
    CHECK(relative_error(frozen, expected) < 1e-5);
    // A trainable backbone in training mode runs the modules (batch statistics, gradients).
    resnet->set_trainable_stages(imcap::kResNetStages);
    resnet->train(true);
    CHECK(resnet->forward_features(images).requires_grad());
  }
}

TEST_CASE("the inference path computes in bfloat16 when asked and returns float32", "[models]") {
  torch::manual_seed(6);
  imcap::EncoderOptions options;
  options.arch = imcap::ResNetArch::kResNet18;
  options.embed_size = 16;
  imcap::Encoder encoder(options);
  encoder->eval();
  const torch::Tensor images = torch::randn({2, 3, 64, 64});
  torch::NoGradGuard no_grad;
  const torch::Tensor full = encoder->backbone->forward_features(images);
  // Asking for the weights' own type is the default path, bit for bit.
  CHECK(torch::equal(encoder->backbone->forward_features(images, torch::kFloat), full));
  const torch::Tensor bf16 = encoder->backbone->forward_features(images, torch::kBFloat16);
  CHECK(bf16.scalar_type() == torch::kFloat);
  REQUIRE(bf16.sizes() == full.sizes());
  // bfloat16 keeps 8 significant bits, and the roundings of 17 layers add up: PyTorch's own
  // bfloat16 forward of a randomly initialised ResNet-18 (torchvision, same input size) is off
  // by 7% of the largest feature. A wrong weight or layout would be off by about 100%.
  const double err = relative_error(bf16, full);
  CHECK(err > 1e-3);
  CHECK(err < 0.15);
  // The float32 plan is kept beside the bfloat16 one, and still gives the same bits.
  CHECK(torch::equal(encoder->backbone->forward_features(images), full));
  CHECK_FALSE(encoder->backbone->inference_engine().fused(torch::kBFloat16));  // cuDNN only
  // The encoder's head computes in float32 from the bfloat16 features.
  const torch::Tensor embedded = encoder->forward(images, torch::kBFloat16);
  CHECK(embedded.scalar_type() == torch::kFloat);
  CHECK(relative_error(embedded, encoder->forward(images)) < 0.15);
  CHECK_THROWS_AS(encoder->backbone->forward_features(images, torch::kDouble),
                  imcap::InvalidArgument);
  // LibTorch has no float16 convolutions on the CPU: refused up front, pointing to bfloat16.
  CHECK_THROWS_AS(encoder->backbone->forward_features(images, torch::kHalf),
                  imcap::InvalidArgument);
  CHECK_THROWS_WITH(
      encoder->forward(images, torch::kHalf),
      Catch::Contains("float16 needs a CUDA device") && Catch::Contains("use bfloat16"));
}

TEST_CASE("the folded encoder on CUDA (channels_last) equals the CPU's", "[models][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("CUDA is not available: nothing to compare");
    return;
  }
  torch::manual_seed(8);
  imcap::EncoderOptions options;
  options.arch = imcap::ResNetArch::kResNet50;
  options.embed_size = 32;
  imcap::Encoder encoder(options);
  encoder->eval();
  const torch::Tensor images = torch::randn({3, 3, 96, 96});
  torch::NoGradGuard no_grad;
  const torch::Tensor cpu = encoder->forward_all(images).pooled;
  encoder->to(torch::kCUDA);
  const torch::Tensor gpu = encoder->forward_all(images.to(torch::kCUDA)).pooled.cpu();
  WARN("fused cuDNN convolutions: float32 "
       << encoder->backbone->inference_engine().fused(torch::kFloat));
  // cuDNN may use TF32 for float32 convolutions: 1e-2 of the largest feature, not 1e-5.
  CHECK(relative_error(gpu, cpu) < 1e-2);
  const torch::Tensor bf16 =
      encoder->forward_all(images.to(torch::kCUDA), torch::kBFloat16).pooled.cpu();
  CHECK(bf16.scalar_type() == torch::kFloat);
  CHECK(relative_error(bf16, cpu) < 0.15);
  WARN("fused cuDNN convolutions: bfloat16 "
       << encoder->backbone->inference_engine().fused(torch::kBFloat16));
}

TEST_CASE("another compute type than the weights' needs the inference path", "[models]") {
  imcap::ResNetOptions options;
  options.arch = imcap::ResNetArch::kResNet18;
  imcap::ResNet resnet(options);  // every stage trains
  resnet->train(true);
  const torch::Tensor images = torch::randn({2, 3, 32, 32});
  CHECK_THROWS_AS(resnet->forward_features(images, torch::kBFloat16), imcap::InvalidArgument);
  resnet->eval();
  resnet->set_fast_inference(false);
  {
    torch::NoGradGuard no_grad;
    CHECK_THROWS_AS(resnet->forward_features(images, torch::kBFloat16), imcap::InvalidArgument);
    resnet->set_fast_inference(true);
    CHECK(resnet->forward_features(images, torch::kBFloat16).scalar_type() == torch::kFloat);
  }
}
