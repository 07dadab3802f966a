// The Show, Attend and Tell decoder: parity with a PyTorch implementation of sgrvinod's
// DecoderWithAttention (names, logits, attention weights, loss, greedy captions), steps against
// teacher forcing, the loss's gradients, the encoder's grid, errors. Beam search over it is
// checked against exhaustive search in test_search.cpp.
#include <torch/torch.h>
#include "catch.hpp"

#include <map>
#include <string>
#include <vector>

#include "imcap/attention_decoder.hpp"
#include "imcap/decoder.hpp"
#include "imcap/encoder.hpp"
#include "imcap/error.hpp"
#include "imcap/search.hpp"  // greedy_ids
#include "module_support.hpp"
#include "support.hpp"

using namespace imcap::test::modules;  // NOLINT(google-build-using-namespace)

namespace {

imcap::AttentionDecoderOptions small_options() {
  imcap::AttentionDecoderOptions o;
  o.vocab_size = 40;
  o.embed_size = 12;
  o.hidden_size = 16;
  o.attention_dim = 10;
  o.encoder_dim = 24;
  return o;
}

// A caption batch (B, T) starting with <start> = 1, and lengths in [2, T].
struct Batch {
  torch::Tensor grid, captions, lengths;
};

Batch random_batch(int64_t batch, int64_t pixels, int64_t width, std::uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  Batch b;
  b.grid = torch::randn({batch, pixels, 24}, gen);
  b.captions = torch::randint(2, 40, {batch, width}, gen, torch::kLong);
  b.captions.select(1, 0).fill_(1);
  b.lengths = torch::randint(2, width + 1, {batch}, gen, torch::kLong);
  b.lengths[0] = width;
  return b;
}

// valid[b, t]: step t of caption b has a target (t < lengths[b] - 1).
torch::Tensor valid_steps(const torch::Tensor& lengths, int64_t steps) {
  return imcap::length_mask(lengths - 1, steps);
}

}  // namespace

TEST_CASE("attention decoder matches sgrvinod's DecoderWithAttention",
          "[models][parity][attention]") {
  TempDir dir;
  python({"attention", dir.path()});
  const TensorMap weights = load_tensor_dict(dir.file("weights.pt"));
  const TensorMap data = load_tensor_dict(dir.file("data.pt"));
  imcap::AttentionDecoder decoder(small_options());
  // The state dict's names and shapes are the PyTorch module's, one to one.
  std::vector<std::string> names;
  for (const auto& [name, tensor] : weights) {
    names.push_back(name);
    INFO(name);
    REQUIRE(decoder->named_parameters().contains(name));
    CHECK(decoder->named_parameters()[name].sizes() == tensor.sizes());
  }
  CHECK(names.size() == decoder->named_parameters().size());
  decoder->eval();
  torch::NoGradGuard no_grad;
  const auto& grid = data.at("grid");
  const auto& captions = data.at("captions");
  const auto& lengths = data.at("lengths");
  const torch::Tensor valid = valid_steps(lengths, captions.size(1) - 1);
  // Unloaded weights do not match: the comparisons below can fail.
  CHECK(max_abs_error(decoder->forward(grid, captions, lengths).logits.index({valid}),
                      data.at("logits").index({valid})) > 1e-2);
  assign_state(*decoder, weights);
  const imcap::AttentionOutput out = decoder->forward(grid, captions, lengths);
  CHECK(max_abs_error(out.logits.index({valid}), data.at("logits").index({valid})) < 1e-5);
  CHECK(max_abs_error(out.alphas.index({valid}), data.at("alphas").index({valid})) < 1e-6);
  // The attention sums to one over the grid at every step.
  CHECK(max_abs_error(out.alphas.sum(2), torch::ones({captions.size(0), captions.size(1) - 1})) <
        1e-6);
  const double want = data.at("cross_entropy").item<double>() + data.at("penalty").item<double>();
  CHECK(decoder->loss(grid, captions, lengths).item<double>() == Approx(want).epsilon(1e-5));

  // Greedy decoding from <start>: the reference's argmax loop, token for token.
  const imcap::AttentionStepper steps(decoder);
  const torch::Tensor& greedy = data.at("greedy");
  CHECK(torch::equal(imcap::greedy_ids(steps, grid, static_cast<int>(greedy.size(1))), greedy));
}

TEST_CASE("attention decoder steps reproduce teacher forcing and expose the attention",
          "[models][attention]") {
  torch::manual_seed(3);
  imcap::AttentionDecoder decoder(small_options());
  decoder->eval();
  torch::NoGradGuard no_grad;
  const Batch b = random_batch(3, 6, 5, 11);
  const imcap::AttentionOutput out = decoder->forward(b.grid, b.captions);
  imcap::StepStart s = decoder->start(b.grid);
  CHECK(max_abs_error(s.scores, out.logits.select(1, 0)) < 1e-6);
  CHECK(max_abs_error(imcap::AttentionDecoderImpl::attention_weights(s.state),
                      out.alphas.select(1, 0)) < 1e-6);
  for (int64_t t = 1; t < out.logits.size(1); ++t) {
    INFO("step " << t);
    const torch::Tensor scores = decoder->step(b.captions.select(1, t), s.state);
    CHECK(max_abs_error(scores, out.logits.select(1, t)) < 1e-5);
    CHECK(max_abs_error(imcap::AttentionDecoderImpl::attention_weights(s.state),
                        out.alphas.select(1, t)) < 1e-6);
  }
  // Rows are independent: reordering the state's rows reorders the next scores.
  imcap::DecodeState swapped = s.state;
  swapped.select_rows(torch::tensor({2, 0, 1}, torch::kLong));
  const torch::Tensor ids = torch::tensor({5, 6, 7}, torch::kLong);
  const torch::Tensor a = decoder->step(ids, s.state);
  const torch::Tensor c =
      decoder->step(ids.index_select(0, torch::tensor({2, 0, 1}, torch::kLong)), swapped);
  CHECK(max_abs_error(c, a.index_select(0, torch::tensor({2, 0, 1}, torch::kLong))) < 1e-6);
}

TEST_CASE("attention decoder loss: values and gradients of the plain formula",
          "[models][attention]") {
  torch::manual_seed(5);
  auto options = small_options();
  options.attention_reg = 0.7;
  options.dropout = 0.0;
  imcap::AttentionDecoder decoder(options);
  const Batch b = random_batch(4, 5, 6, 21);
  const int64_t steps = b.captions.size(1) - 1;
  const torch::Tensor valid = valid_steps(b.lengths, steps);

  // The plain formula, through autograd: cross-entropy over the targets + λ · penalty.
  const imcap::AttentionOutput out = decoder->forward(b.grid, b.captions, b.lengths);
  const torch::Tensor targets = b.captions.slice(1, 1);
  const torch::Tensor ce =
      torch::nn::functional::cross_entropy(out.logits.index({valid}), targets.index({valid}));
  const torch::Tensor looked = (out.alphas * valid.unsqueeze(2).to(torch::kFloat)).sum(1);
  const torch::Tensor plain = ce + 0.7 * (1.0 - looked).pow(2).mean();
  decoder->zero_grad();
  plain.backward();
  std::map<std::string, torch::Tensor> want;
  for (const auto& p : decoder->named_parameters()) want[p.key()] = p.value().grad().clone();

  decoder->zero_grad();
  const torch::Tensor fused = decoder->loss(b.grid, b.captions, b.lengths);
  CHECK(fused.item<double>() == Approx(plain.item<double>()).epsilon(1e-6));
  fused.backward();
  for (const auto& p : decoder->named_parameters()) {
    INFO(p.key());
    CHECK(max_abs_error(p.value().grad(), want.at(p.key())) < 1e-5);
  }

  // weighted_loss: Σ_b w_b · (-log p(caption b)), no penalty.
  torch::NoGradGuard no_grad;
  const torch::Tensor w = torch::tensor({0.5f, -1.0f, 2.0f, 0.0f});
  const torch::Tensor logp = torch::log_softmax(out.logits, 2)
                                 .gather(2, targets.unsqueeze(2))
                                 .squeeze(2)
                                 .masked_fill(~valid, 0.0)
                                 .sum(1);
  const double weighted = decoder->weighted_loss(b.grid, b.captions, b.lengths, w).item<double>();
  CHECK(weighted == Approx(-(w * logp).sum().item<double>()).epsilon(1e-5));
}

TEST_CASE("encoder grid: the last stage's map as positions, optionally pooled",
          "[models][attention]") {
  torch::manual_seed(1);
  imcap::EncoderOptions options;
  options.arch = imcap::ResNetArch::kResNet18;
  imcap::Encoder encoder(options);
  encoder->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor images = torch::randn({2, 3, 96, 64});
  const imcap::EncoderOutput all = encoder->forward_all(images);
  const torch::Tensor grid = encoder->forward_spatial(images);
  REQUIRE(grid.sizes() == torch::IntArrayRef({2, 3 * 2, 512}));
  // Position p = row * w + column.
  CHECK(max_abs_error(grid.select(1, 1 * 2 + 1), all.spatial.select(2, 1).select(2, 1)) < 1e-5);
  CHECK(max_abs_error(grid.mean(1), all.pooled) < 1e-5);
  const torch::Tensor pooled = encoder->forward_spatial(images, /*grid=*/1);
  CHECK(pooled.sizes() == torch::IntArrayRef({2, 1, 512}));
  CHECK(max_abs_error(pooled.squeeze(1), all.pooled) < 1e-5);
  CHECK(imcap::spatial_grid(all.spatial, 2).sizes() == torch::IntArrayRef({2, 4, 512}));
  CHECK_THROWS_AS(imcap::spatial_grid(all.pooled, 0), imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::spatial_grid(all.spatial, -1), imcap::InvalidArgument);
}

TEST_CASE("attention decoder rejects bad options and inputs, naming them", "[models][attention]") {
  using Catch::Contains;
  auto bad = small_options();
  bad.vocab_size = 0;
  CHECK_THROWS_WITH(imcap::AttentionDecoder(bad), Contains("vocab_size"));
  bad = small_options();
  bad.dropout = 1.0;
  CHECK_THROWS_WITH(imcap::AttentionDecoder(bad), Contains("dropout"));
  bad = small_options();
  bad.attention_reg = -1;
  CHECK_THROWS_WITH(imcap::AttentionDecoder(bad), Contains("attention_reg"));
  bad = small_options();
  bad.start_id = 40;
  CHECK_THROWS_WITH(imcap::AttentionDecoder(bad), Contains("start_id"));

  imcap::AttentionDecoder decoder(small_options());
  const Batch b = random_batch(2, 4, 5, 3);
  CHECK_THROWS_WITH(decoder->forward(b.grid.select(1, 0), b.captions),
                    Contains("attention decoder grid") && Contains("(B, P, 24)"));
  CHECK_THROWS_WITH(decoder->forward(b.grid, b.captions.slice(1, 0, 1)), Contains("T >= 2"));
  CHECK_THROWS_WITH(decoder->forward(b.grid, b.captions, torch::tensor({5, 1})),
                    Contains("[2, 5]"));
  CHECK_THROWS_WITH(decoder->forward(b.grid, b.captions + 100), Contains("[0, 40)"));
  CHECK_THROWS_WITH(decoder->weighted_loss(b.grid, b.captions, {}, torch::ones({3})),
                    Contains("attention decoder weights") && Contains("[2]"));
  imcap::StepStart s = decoder->start(b.grid);
  CHECK_THROWS_WITH(decoder->step(torch::tensor({1, 99}), s.state), Contains("[0, 40)"));
  imcap::DecodeState broken = s.state;
  broken.tensors.pop_back();
  broken.row_dims.pop_back();
  CHECK_THROWS_WITH(decoder->step(torch::tensor({1, 2}), broken), Contains("5 tensors"));
}
