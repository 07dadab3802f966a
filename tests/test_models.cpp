// Encoder (torchvision ResNets + captioning head) and Show and Tell decoder: names, parity with
// PyTorch, freezing, masking, errors.
#include <torch/torch.h>
#include "catch.hpp"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "detail/compressed_projection.hpp"
#include "detail/resnet_inference.hpp"
#include "detail/lstm_sequence.hpp"
#include "imcap/captioner.hpp"
#include "imcap/decoder.hpp"
#include "imcap/encoder.hpp"
#include "imcap/error.hpp"
#include "imcap/weights.hpp"
#include "support.hpp"

namespace {

using imcap::test::eval_decoder;
using imcap::test::TempDir;
using TensorMap = std::map<std::string, torch::Tensor>;
using NamedShapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

void python(const std::vector<std::string>& args) {
  const auto r = imcap::test::run_python("models_reference.py", args);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
}

// A torch.save'd plain dict of tensors. The only place that reads weight files in these tests.
TensorMap load_tensor_dict(const std::string& path) {
  TensorMap out;
  for (const auto& [name, tensor] : imcap::load_weights(path)) out[name] = tensor;
  return out;
}

// Copies every parameter and buffer of `module` from `tensors`; the key sets must be equal.
void assign_state(torch::nn::Module& module, const TensorMap& tensors) {
  torch::NoGradGuard no_grad;
  size_t assigned = 0;
  auto assign = [&](const std::string& name, torch::Tensor& target) {
    INFO(name);
    const auto it = tensors.find(name);
    REQUIRE(it != tensors.end());
    REQUIRE(it->second.sizes() == target.sizes());
    target.copy_(it->second);
    ++assigned;
  };
  for (auto& p : module.named_parameters()) assign(p.key(), p.value());
  for (auto& b : module.named_buffers()) assign(b.key(), b.value());
  CHECK(assigned == tensors.size());
}

NamedShapes state_shapes(const torch::nn::Module& module) {
  NamedShapes out;
  for (const auto& p : module.named_parameters()) {
    out.emplace_back(p.key(), p.value().sizes().vec());
  }
  for (const auto& b : module.named_buffers()) out.emplace_back(b.key(), b.value().sizes().vec());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> state_names(const torch::nn::Module& module) {
  std::vector<std::string> out;
  for (const auto& [name, shape] : state_shapes(module)) out.push_back(name);
  return out;
}

// max |a - ref| / max |ref|
double relative_error(const torch::Tensor& a, const torch::Tensor& ref) {
  return ((a - ref).abs().max() / ref.abs().max()).item<double>();
}

double max_abs_error(const torch::Tensor& a, const torch::Tensor& ref) {
  return (a - ref).abs().max().item<double>();
}

// The stage (0 = stem .. 4 = layer4) of a backbone parameter name such as "layer3.1.conv1.weight".
int stage_of(const std::string& name) {
  if (name.rfind("layer", 0) == 0) return name[5] - '0';
  return 0;
}

bool all_equal(const torch::nn::Module& a, const TensorMap& before, const std::string& prefix) {
  for (const auto& b : a.named_buffers()) {
    if (b.key().rfind(prefix, 0) != 0) continue;
    if (!torch::equal(b.value(), before.at(b.key()))) return false;
  }
  return true;
}

TensorMap buffers_copy(const torch::nn::Module& m) {
  TensorMap out;
  for (const auto& b : m.named_buffers()) out[b.key()] = b.value().clone();
  return out;
}

// Runs the torchvision reference for `arch` and checks pooled features and logits.
void check_resnet_parity(const std::string& arch, int batch, int size) {
  TempDir dir;
  python({"resnet", arch, std::to_string(batch), std::to_string(size), dir.path()});
  const TensorMap weights = load_tensor_dict(dir.file("weights.pt"));
  const TensorMap data = load_tensor_dict(dir.file("data.pt"));
  imcap::ResNetOptions options;
  options.arch = imcap::parse_resnet_arch(arch);
  options.num_classes = 1000;
  imcap::ResNet resnet(options);
  assign_state(*resnet, weights);
  resnet->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor pooled = resnet->forward_pooled(data.at("images"));
  const torch::Tensor logits = resnet->forward(data.at("images"));
  const double pooled_error = relative_error(pooled, data.at("pooled"));
  const double logits_error = relative_error(logits, data.at("logits"));
  INFO(arch);
  CHECK(pooled_error < 1e-4);
  CHECK(logits_error < 1e-4);
}

}  // namespace

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

TEST_CASE("decoder matches the notebooks' DecoderRNN", "[models][parity]") {
  for (const int layers : {1, 2}) {
    INFO("num_layers " << layers);
    TempDir dir;
    python({"decoder", std::to_string(layers), dir.path()});
    const TensorMap weights = load_tensor_dict(dir.file("weights.pt"));
    const TensorMap data = load_tensor_dict(dir.file("data.pt"));
    imcap::DecoderOptions options;
    options.vocab_size = 50;
    options.embed_size = 16;
    options.hidden_size = 32;
    options.num_layers = layers;
    imcap::Decoder decoder(options);
    decoder->eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor& features = data.at("features");
    const torch::Tensor& captions = data.at("captions");
    // Unloaded weights do not match: the comparison below can fail.
    CHECK(max_abs_error(decoder->forward(features, captions), data.at("logits")) > 1e-2);
    assign_state(*decoder, weights);
    const torch::Tensor logits = decoder->forward(features, captions);
    CHECK(max_abs_error(logits, data.at("logits")) < 1e-5);
    const torch::Tensor loss = imcap::caption_loss(logits, captions);
    CHECK(std::abs(loss.item<double>() - data.at("loss").item<double>()) < 1e-5);
    const auto full = torch::full({captions.size(0)}, captions.size(1), torch::kLong);
    CHECK(max_abs_error(decoder->forward(features, captions, full), logits) == 0.0);

    CHECK(torch::equal(decoder->sample(features, /*max_len=*/20), data.at("greedy")));
    const int64_t end_id = data.at("end_id").item<int64_t>();
    CHECK(torch::equal(decoder->sample(features, 20, end_id), data.at("stopped")));
    // One row stops as soon as it emits end_id, as the notebook's loop breaks.
    const torch::Tensor row = data.at("stopped")[0];
    const int64_t stop = row.eq(end_id).nonzero()[0].item<int64_t>();
    CHECK(torch::equal(decoder->sample(features.slice(0, 0, 1), 20, end_id),
                       row.slice(0, 0, stop + 1).unsqueeze(0)));
  }
}

TEST_CASE("decoder steps reproduce the teacher-forced logits in every inject mode", "[models]") {
  torch::manual_seed(7);
  for (const auto inject :
       {imcap::ImageInject::kPre, imcap::ImageInject::kPar, imcap::ImageInject::kInit}) {
    INFO(imcap::to_string(inject));
    imcap::DecoderOptions options;
    options.vocab_size = 30;
    options.embed_size = 8;
    options.hidden_size = 12;
    options.num_layers = 2;
    options.dropout = 0.3;
    options.image_inject = inject;
    imcap::Decoder decoder(options);
    decoder->eval();
    CHECK(decoder->lstm->named_parameters()["weight_ih_l0"].size(1) ==
          (inject == imcap::ImageInject::kPar ? 16 : 8));
    CHECK((decoder->init_h.is_empty() == (inject != imcap::ImageInject::kInit)));
    const torch::Tensor features = torch::randn({3, 8});
    const torch::Tensor captions = torch::randint(0, 30, {3, 6});
    torch::NoGradGuard no_grad;
    const torch::Tensor logits = decoder->forward(features, captions);
    REQUIRE(logits.sizes() == torch::IntArrayRef({3, 6, 30}));
    imcap::DecoderStepOutput s = decoder->start(features);
    CHECK(max_abs_error(s.logits, logits.select(1, 0)) < 1e-5);
    for (int64_t t = 1; t < 6; ++t) {
      s = decoder->step(captions.select(1, t - 1), s.state);
      CHECK(max_abs_error(s.logits, logits.select(1, t)) < 1e-5);
    }
    // Reordering the state (beam search) reorders the rows.
    const torch::Tensor order = torch::tensor({2, 0}, torch::kLong);
    const imcap::DecoderState picked = s.state.index_select(order);
    const auto a = decoder->step(captions.select(1, 5).index_select(0, order), picked);
    const auto b = decoder->step(captions.select(1, 5), s.state);
    CHECK(max_abs_error(a.logits, b.logits.index_select(0, order)) < 1e-6);
    // Greedy sampling is the arg-max chain of steps.
    const torch::Tensor ids = decoder->sample(features, /*max_len=*/4);
    imcap::DecoderStepOutput g = decoder->start(features);
    for (int64_t t = 0; t < 4; ++t) {
      const torch::Tensor next = std::get<1>(g.logits.max(1));
      CHECK(torch::equal(ids.select(1, t), next));
      g = decoder->step(next, g.state);
    }
  }
}

TEST_CASE("decoder state-dict names follow the notebooks", "[models]") {
  imcap::DecoderOptions options;
  options.vocab_size = 11;
  options.embed_size = 4;
  options.hidden_size = 6;
  CHECK(state_shapes(*imcap::Decoder(options)) == NamedShapes{{"embed.weight", {11, 4}},
                                                              {"linear.bias", {11}},
                                                              {"linear.weight", {11, 6}},
                                                              {"lstm.bias_hh_l0", {24}},
                                                              {"lstm.bias_ih_l0", {24}},
                                                              {"lstm.weight_hh_l0", {24, 6}},
                                                              {"lstm.weight_ih_l0", {24, 4}}});
  options.image_inject = imcap::ImageInject::kInit;
  options.num_layers = 2;
  const auto names = state_names(*imcap::Decoder(options));
  CHECK(std::count(names.begin(), names.end(), "init_h.weight") == 1);
  CHECK(std::count(names.begin(), names.end(), "init_c.bias") == 1);
  CHECK(std::count(names.begin(), names.end(), "lstm.weight_ih_l1") == 1);
}

TEST_CASE("the caption loss ignores padding", "[models]") {
  torch::manual_seed(3);
  imcap::DecoderOptions options;
  options.vocab_size = 20;
  options.embed_size = 8;
  options.hidden_size = 10;
  imcap::Decoder decoder(options);
  const torch::Tensor features = torch::randn({3, 8});
  const torch::Tensor lengths = torch::tensor({5, 2, 4}, torch::kLong);
  torch::Tensor captions = torch::randint(0, 20, {3, 5});
  const torch::Tensor logits = decoder->forward(features, captions, lengths);
  const torch::Tensor loss = imcap::caption_loss(logits, captions, lengths);

  // Different padding, even ids outside the vocabulary, changes nothing valid.
  torch::Tensor repadded = captions.clone();
  repadded[1].slice(0, 2).fill_(999);
  repadded[2][4] = -7;
  const torch::Tensor logits2 = decoder->forward(features, repadded, lengths);
  const torch::Tensor loss2 = imcap::caption_loss(logits2, repadded, lengths);
  CHECK(loss.item<double>() == loss2.item<double>());
  const torch::Tensor mask = imcap::length_mask(lengths, 5);
  CHECK(torch::equal(
      mask,
      torch::tensor({1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0}).to(torch::kBool).view({3, 5})));
  CHECK(torch::equal(logits.index({mask}), logits2.index({mask})));

  // The mean over the 11 valid positions.
  const torch::Tensor nll =
      -torch::log_softmax(logits, 2).gather(2, captions.unsqueeze(2)).squeeze(2);
  CHECK(loss.item<double>() == Approx(nll.index({mask}).mean().item<double>()).epsilon(1e-6));

  // Gradients flow only from valid positions.
  loss2.backward();
  CHECK(decoder->embed->weight.grad().defined());
}

TEST_CASE("wrong shapes and options give clear errors", "[models]") {
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
  eo.embed_size = 0;
  CHECK_THROWS_AS(imcap::Encoder(eo), imcap::InvalidArgument);

  imcap::DecoderOptions d;
  CHECK_THROWS_WITH(imcap::Decoder(d), Catch::Contains("vocab_size"));
  d.vocab_size = 10;
  d.embed_size = 4;
  d.hidden_size = 5;
  d.dropout = 1.5;
  CHECK_THROWS_AS(imcap::Decoder(d), imcap::InvalidArgument);
  d.dropout = 0;
  imcap::Decoder decoder(d);
  const torch::Tensor f = torch::zeros({2, 4});
  const torch::Tensor c = torch::zeros({2, 3}, torch::kLong);
  CHECK_THROWS_WITH(decoder->forward(torch::zeros({2, 5}), c), Catch::Contains("(B, 4)"));
  CHECK_THROWS_AS(decoder->forward(f, c.to(torch::kFloat)), imcap::InvalidArgument);
  CHECK_THROWS_AS(decoder->forward(f, torch::zeros({3, 3}, torch::kLong)), imcap::InvalidArgument);
  CHECK_THROWS_AS(decoder->forward(f, torch::zeros({2, 0}, torch::kLong)), imcap::InvalidArgument);
  CHECK_THROWS_WITH(decoder->forward(f, c, torch::tensor({3, 4}, torch::kLong)),
                    Catch::Contains("[1, 3]") && Catch::Contains("max 4"));
  CHECK_THROWS_AS(decoder->forward(f, c, torch::tensor({0, 2}, torch::kLong)),
                  imcap::InvalidArgument);
  CHECK_THROWS_AS(decoder->forward(f, c, torch::tensor({3}, torch::kLong)), imcap::InvalidArgument);
  CHECK_THROWS_WITH(decoder->forward(f, torch::full({2, 3}, 10, torch::kLong)),
                    Catch::Contains("[0, 10)") && Catch::Contains("max 10"));
  const auto s = decoder->start(f);
  CHECK_THROWS_AS(decoder->step(torch::tensor({1, -1}, torch::kLong), s.state),
                  imcap::InvalidArgument);
  CHECK_THROWS_AS(decoder->step(torch::zeros({3}, torch::kLong), s.state), imcap::InvalidArgument);
  CHECK_THROWS_AS(decoder->step_embedded(torch::zeros({2, 3}), s.state), imcap::InvalidArgument);
  CHECK_THROWS_AS(decoder->sample(f, 0), imcap::InvalidArgument);
  CHECK_THROWS_AS(decoder->sample(f, 5, 10), imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::caption_loss(torch::zeros({2, 3, 10}), torch::zeros({2, 4}, torch::kLong)),
                  imcap::InvalidArgument);
}

TEST_CASE("decoder inference steps equal the LSTM module's, for one row and several", "[models]") {
  torch::manual_seed(11);
  imcap::DecoderOptions options;
  options.vocab_size = 40;
  options.embed_size = 6;
  options.hidden_size = 10;
  options.num_layers = 2;
  imcap::Decoder decoder(options);
  decoder->eval();
  for (const int64_t rows : {1, 4}) {
    INFO("rows " << rows);
    const torch::Tensor features = torch::randn({rows, 6});
    const torch::Tensor ids = torch::randint(0, 40, {rows}, torch::kLong);
    // With autograd on, step() runs torch::nn::LSTM; without, the hand-written cell.
    const imcap::DecoderStepOutput module_start = decoder->start(features);
    const imcap::DecoderStepOutput module_step = decoder->step(ids, module_start.state);
    REQUIRE(module_step.logits.requires_grad());
    torch::NoGradGuard no_grad;
    const imcap::DecoderStepOutput fast_start = decoder->start(features);
    const imcap::DecoderStepOutput fast_step = decoder->step(ids, fast_start.state);
    CHECK(max_abs_error(fast_start.logits, module_start.logits) < 1e-5);
    CHECK(max_abs_error(fast_step.logits, module_step.logits) < 1e-5);
    CHECK(max_abs_error(fast_step.state.h, module_step.state.h) < 1e-6);
    CHECK(max_abs_error(fast_step.state.c, module_step.state.c) < 1e-6);
    CHECK(fast_step.state.h.sizes() == torch::IntArrayRef({2, rows, 10}));
  }
}

TEST_CASE("the sequence LSTM equals torch::nn::LSTM, outputs and gradients", "[models]") {
  torch::manual_seed(31);
  for (const int64_t layers : {1, 2}) {
    INFO("layers " << layers);
    torch::nn::LSTM lstm(torch::nn::LSTMOptions(12, 20).num_layers(layers).batch_first(true));
    const torch::Tensor x = torch::randn({5, 7, 12}).requires_grad_();
    const torch::Tensor h0 = torch::randn({layers, 5, 20}).requires_grad_();
    const torch::Tensor c0 = torch::randn({layers, 5, 20}).requires_grad_();
    const torch::Tensor weight = torch::randn({5, 7, 20});  // a loss that weighs every output
    REQUIRE(imcap::detail::lstm_sequence_supported(x, lstm));
    std::vector<torch::Tensor> leaves = {x, h0, c0};
    for (const auto& p : lstm->parameters()) leaves.push_back(p);
    auto outputs_and_grads = [&](const torch::Tensor& y) {
      std::vector<torch::Tensor> out = {y.detach().clone()};
      for (const auto& g : torch::autograd::grad({(y * weight).sum()}, leaves)) out.push_back(g);
      return out;
    };
    const auto ref = outputs_and_grads(std::get<0>(lstm->forward(x, std::make_tuple(h0, c0))));
    const auto got = outputs_and_grads(imcap::detail::lstm_sequence(x, h0, c0, lstm));
    REQUIRE(got.size() == ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i) {
      INFO("tensor " << i);
      REQUIRE(got[i].sizes() == ref[i].sizes());
      CHECK(max_abs_error(got[i], ref[i]) < 1e-5);
    }
  }
}

TEST_CASE("compressed decode weights keep each row's best scores exact and bound the rest",
          "[models]") {
  torch::manual_seed(21);
  imcap::DecoderOptions options;
  options.vocab_size = 3000;  // several row blocks of the compressed kernel
  options.embed_size = 24;
  options.hidden_size = 72;  // not a multiple of the kernel's 32 columns
  imcap::Decoder decoder(options);
  decoder->eval();
  torch::NoGradGuard no_grad;
  // Two words whose weights differ by less than bfloat16 or int8 resolve, placed on top by
  // their bias: only the float32 recomputation orders them.
  decoder->linear->weight[7].copy_(decoder->linear->weight[5] * (1 + 1e-3f));
  decoder->linear->bias[5].fill_(0.3f);
  decoder->linear->bias[7].fill_(0.3f);
  for (const auto weights : {imcap::DecodeWeights::kBFloat16, imcap::DecodeWeights::kInt8}) {
    for (const int64_t rows : {1, 3}) {
      INFO(imcap::to_string(weights) << ", rows " << rows);
      const torch::Tensor features = torch::randn({rows, 24});
      const torch::Tensor ids = torch::randint(0, 3000, {rows}, torch::kLong);
      const auto ref_start = decoder->start(features);
      const auto ref_step = decoder->step(ids, ref_start.state);
      const auto start = decoder->start(features, weights);
      const auto step = decoder->step(ids, start.state, weights);
      CHECK(torch::equal(start.state.h, ref_start.state.h));
      CHECK(torch::equal(step.state.h, ref_step.state.h));
      for (const auto& [got, ref] :
           {std::pair{start.logits, ref_start.logits}, std::pair{step.logits, ref_step.logits}}) {
        const auto [ref_top, ref_ids] = ref.topk(imcap::detail::kExactDecodeScores, /*dim=*/1);
        const auto [got_top, got_ids] = got.topk(imcap::detail::kExactDecodeScores, /*dim=*/1);
        INFO("float32 top " << ref_top << ref_ids << "\ncompressed top " << got_top << got_ids);
        CHECK(torch::equal(got_ids, ref_ids));
        CHECK(torch::equal(got_top, ref_top));  // bit for bit
        // The rest is the compressed product: close, not equal.
        const double error = max_abs_error(got, ref);
        CHECK(error > 0.0);
        CHECK(error < (weights == imcap::DecodeWeights::kInt8 ? 2e-2 : 5e-3));
      }
    }
  }
  // The copy follows in-place changes of the weights.
  const torch::Tensor features = torch::randn({1, 24});
  const auto before = decoder->start(features, imcap::DecodeWeights::kInt8).logits;
  decoder->linear->weight.mul_(-1);
  const auto ref = decoder->start(features).logits;
  const auto after = decoder->start(features, imcap::DecodeWeights::kInt8).logits;
  CHECK(torch::equal(std::get<1>(after.max(1)), std::get<1>(ref.max(1))));
  CHECK(max_abs_error(after, ref) < 2e-2);
  CHECK(max_abs_error(after, before) > 0.1);
  // More rows than the compressed path takes, and weights it cannot hold, run in float32.
  const torch::Tensor many = torch::randn({imcap::detail::kMaxCompressedDecodeRows + 1, 24});
  CHECK(torch::equal(decoder->start(many, imcap::DecodeWeights::kInt8).logits,
                     decoder->start(many).logits));
  decoder->linear->weight[3][2].fill_(std::numeric_limits<float>::infinity());
  CHECK(torch::allclose(decoder->start(features, imcap::DecodeWeights::kBFloat16).logits,
                        decoder->start(features).logits, 0.0, 0.0, /*equal_nan=*/true));
  CHECK(imcap::parse_decode_weights("int8") == imcap::DecodeWeights::kInt8);
  CHECK_THROWS_WITH(imcap::parse_decode_weights("fp8"),
                    Catch::Contains("'fp8'") && Catch::Contains("float32, bfloat16 or int8"));
}

TEST_CASE("greedy search chooses float32's words with compressed decode weights", "[models]") {
  imcap::Decoder decoder = eval_decoder(/*vocab=*/500, /*embed=*/16, /*hidden=*/64, /*seed=*/23);
  imcap::SearchOptions search;
  search.max_length = 12;
  search.end_id = 2;
  search.unk_id = 3;
  search.forbid_unk = true;
  search.min_length = 2;
  const torch::Tensor features = torch::randn({6, 16});
  const auto reference = imcap::greedy_search(imcap::DecoderStepper(decoder), features, search);
  for (const auto weights : {imcap::DecodeWeights::kBFloat16, imcap::DecodeWeights::kInt8}) {
    INFO(imcap::to_string(weights));
    const auto got =
        imcap::greedy_search(imcap::DecoderStepper(decoder, weights), features, search);
    REQUIRE(got.size() == reference.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i].tokens == reference[i].tokens);
      CHECK(std::abs(got[i].log_prob - reference[i].log_prob) < 1e-2);
    }
  }
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
  WARN("fused cuDNN convolutions: float32 " << encoder->backbone->inference_engine().fused(torch::kFloat));
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

TEST_CASE("Decoder::loss on CUDA equals the CPU's, value and gradients", "[models][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("CUDA is not available: nothing to compare");
    return;
  }
  torch::manual_seed(22);
  imcap::DecoderOptions options;
  options.vocab_size = 3000;
  options.embed_size = 8;
  options.hidden_size = 16;
  imcap::Decoder cpu(options), cuda(options);
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : cpu->named_parameters())
      cuda->named_parameters()[p.key()].copy_(p.value());
  }
  cuda->to(torch::kCUDA);
  const torch::Tensor features = torch::randn({6, 8});
  const torch::Tensor captions = torch::randint(0, 3000, {6, 9}, torch::kLong);
  const torch::Tensor lengths = torch::tensor({9, 9, 7, 5, 3, 2}, torch::kLong);
  const torch::Tensor want = cpu->loss(features, captions, lengths);
  want.backward();
  const torch::Tensor got =
      cuda->loss(features.to(torch::kCUDA), captions.to(torch::kCUDA), lengths.to(torch::kCUDA));
  got.backward();
  CHECK(std::abs(got.item<double>() - want.item<double>()) < 1e-4);
  for (const auto& p : cpu->named_parameters()) {
    INFO(p.key());
    const torch::Tensor g = cuda->named_parameters()[p.key()].grad().cpu();
    CHECK(max_abs_error(g, p.value().grad()) < 1e-4);
  }
}

TEST_CASE("Decoder::loss equals caption_loss of forward, value and gradients", "[models]") {
  const int saved_threads = torch::get_num_threads();
  // With a vocabulary of 5,000 a row block (2^16 values) holds 13 of the 35 rows: the fused loss
  // then works on 3 blocks with one thread, and on 2 blocks per thread with two.
  for (const auto& [threads, vocab] :
       {std::pair{1, 37}, std::pair{2, 37}, std::pair{1, 5000}, std::pair{2, 5000}}) {
    torch::set_num_threads(threads);
    for (const bool padded : {false, true}) {
      INFO("threads " << threads << ", vocabulary " << vocab << ", padded " << padded);
      torch::manual_seed(21);
      imcap::DecoderOptions options;
      options.vocab_size = vocab;
      options.embed_size = 6;
      options.hidden_size = 10;
      options.image_inject = imcap::ImageInject::kPar;
      imcap::Decoder decoder(options);
      const torch::Tensor features = torch::randn({5, 6});
      const torch::Tensor captions = torch::randint(0, vocab, {5, 7}, torch::kLong);
      const torch::Tensor lengths =
          padded ? torch::tensor({7, 3, 5, 1, 6}, torch::kLong) : torch::Tensor();
      auto grads = [&](const torch::Tensor& loss) {
        decoder->zero_grad();
        loss.backward();
        std::vector<torch::Tensor> out;
        for (const auto& p : decoder->parameters()) out.push_back(p.grad().clone());
        return out;
      };
      const torch::Tensor expected =
          imcap::caption_loss(decoder->forward(features, captions, lengths), captions, lengths);
      const auto expected_grads = grads(expected);
      const torch::Tensor fused = decoder->loss(features, captions, lengths);
      CHECK(std::abs(fused.item<double>() - expected.item<double>()) <
            1e-6 * expected.item<double>());
      const auto fused_grads = grads(fused);
      REQUIRE(fused_grads.size() == expected_grads.size());
      for (std::size_t i = 0; i < fused_grads.size(); ++i) {
        INFO("parameter " << i);
        CHECK(max_abs_error(fused_grads[i], expected_grads[i]) <
              1e-5 * (1.0 + expected_grads[i].abs().max().item<double>()));
      }
      // Two graphs alive at once keep a buffer each (the kept buffer is reused only once a
      // graph releases it): the first backward still sees its own logits.
      const torch::Tensor first = decoder->loss(features, captions, lengths);
      const torch::Tensor second =
          decoder->loss(features, torch::randint(0, vocab, {5, 7}, torch::kLong), lengths);
      const auto first_grads = grads(first);
      for (std::size_t i = 0; i < first_grads.size(); ++i) {
        INFO("parameter " << i << ", two graphs");
        CHECK(max_abs_error(first_grads[i], expected_grads[i]) <
              1e-5 * (1.0 + expected_grads[i].abs().max().item<double>()));
      }
      CHECK(second.item<double>() > 0.0);
      // The graph holds one buffer, turned into the gradient: a second backward is refused.
      const torch::Tensor again = decoder->loss(features, captions, lengths);
      again.backward({}, /*retain_graph=*/true);
      CHECK_THROWS_WITH(again.backward(), Catch::Contains("only once"));
    }
  }
  torch::set_num_threads(saved_threads);
}
