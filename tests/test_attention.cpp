// The Show, Attend and Tell decoder: parity with a PyTorch implementation of sgrvinod's
// DecoderWithAttention (names, logits, attention weights, loss, greedy captions), steps against
// teacher forcing, the loss's gradients, the encoder's grid, errors; attention models: the model
// file, training, resume, SCST and the CLI. Beam search over it is checked against exhaustive
// search in test_search.cpp.
#include <torch/torch.h>
#include "catch.hpp"

#include <map>
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include "detail/io.hpp"

#include "imcap/attention_decoder.hpp"
#include "imcap/captioner.hpp"
#include "imcap/decoder.hpp"
#include "imcap/encoder.hpp"
#include "imcap/error.hpp"
#include "imcap/model.hpp"
#include "imcap/search.hpp"  // greedy_ids
#include "imcap/trainer.hpp"
#include "imcap/weights.hpp"
#include "module_support.hpp"
#include "support.hpp"
#include "tiny.hpp"
#include "trainer/reward.hpp"
#include "trainer/scst.hpp"

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
  auto options = small_options();
  options.mean_feature = GENERATE(false, true);
  INFO("mean_feature " << options.mean_feature);
  torch::manual_seed(3);
  imcap::AttentionDecoder decoder(options);
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

TEST_CASE("attention decoder's inference steps equal its layers', with any decode weights",
          "[models][attention]") {
  // The searches' steps (no autograd, CPU float32: detail/attention_step.cpp) against the same
  // steps through the module's layers (autograd on), for one row, a few rows (the rows of the
  // weights split between the threads) and many (the products split); with compressed fc
  // weights, greedy search keeps float32's words.
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  imcap::AttentionDecoderOptions o;
  o.vocab_size = 600;
  o.embed_size = 32;
  o.hidden_size = 160;  // 4H = 640 rows: W_hh and the stacked h-products split between threads
  o.attention_dim = 48;
  o.encoder_dim = 40;
  o.mean_feature = GENERATE(false, true);
  INFO("mean_feature " << o.mean_feature);
  torch::manual_seed(41);
  imcap::AttentionDecoder decoder(o);
  decoder->eval();
  auto compare = [&](int64_t rows, std::uint64_t seed) {
    INFO("rows " << rows);
    auto gen = at::detail::createCPUGenerator(seed);
    const torch::Tensor grid = torch::randn({rows, 9, o.encoder_dim}, gen);
    imcap::StepStart fast;
    {
      torch::NoGradGuard no_grad;
      fast = decoder->start(grid);
    }
    imcap::StepStart slow = decoder->start(grid);
    REQUIRE(slow.scores.requires_grad());  // the layers' path
    for (int t = 0; t < 5; ++t) {
      INFO("step " << t);
      CHECK(max_abs_error(fast.scores, slow.scores.detach()) < 1e-4);
      CHECK(max_abs_error(imcap::AttentionDecoderImpl::attention_weights(fast.state),
                          imcap::AttentionDecoderImpl::attention_weights(slow.state).detach()) <
            1e-6);
      const torch::Tensor ids = slow.scores.detach().argmax(1);
      {
        torch::NoGradGuard no_grad;
        fast.scores = decoder->step(ids, fast.state);
      }
      slow.scores = decoder->step(ids, slow.state);
    }
  };
  for (const int64_t rows : {1, 5, 40}) compare(rows, 50 + rows);
  // The stacked h-products are rebuilt when a weight changes in place.
  {
    torch::NoGradGuard no_grad;
    decoder->f_beta->weight.mul_(3.0);
    decoder->attention->decoder_att->bias.add_(0.5);
  }
  compare(5, 60);

  torch::NoGradGuard no_grad;
  check_decode_weights_keep_greedy_words(
      [&](imcap::DecodeWeights w) { return imcap::AttentionStepper(decoder, w); },
      torch::randn({4, 9, o.encoder_dim}));
  at::set_num_threads(threads);
}

TEST_CASE("attention decoder teacher forcing: values and gradients are those of its steps",
          "[models][attention]") {
  // forward() runs the whole caption as one function (on the CPU in float32), the steps run
  // the module's layers one at a time through autograd: the same numbers, the same gradients,
  // the grid's included.
  torch::manual_seed(8);
  auto options = small_options();
  options.dropout = 0.0;
  options.mean_feature = GENERATE(false, true);
  INFO("mean_feature " << options.mean_feature);
  imcap::AttentionDecoder decoder(options);
  const int64_t batch = 5, pixels = 7, width = 6, steps = width - 1;
  const Batch b = random_batch(batch, pixels, width, 31);
  auto gen = at::detail::createCPUGenerator(32);
  const torch::Tensor w_logits = torch::randn({batch, steps, 40}, gen);
  const torch::Tensor w_alphas = torch::randn({batch, steps, pixels}, gen);
  struct Run {
    torch::Tensor logits, alphas;
    std::map<std::string, torch::Tensor> grads;
  };
  auto run = [&](bool whole) {
    decoder->zero_grad();
    const torch::Tensor grid = b.grid.clone().requires_grad_(true);
    Run r;
    if (whole) {
      imcap::AttentionOutput out = decoder->forward(grid, b.captions);
      r.logits = out.logits;
      r.alphas = out.alphas;
    } else {
      imcap::StepStart s = decoder->start(grid);
      std::vector<torch::Tensor> logits{s.scores};
      std::vector<torch::Tensor> alphas{imcap::AttentionDecoderImpl::attention_weights(s.state)};
      for (int64_t t = 1; t < steps; ++t) {
        logits.push_back(decoder->step(b.captions.select(1, t), s.state));
        alphas.push_back(imcap::AttentionDecoderImpl::attention_weights(s.state));
      }
      r.logits = torch::stack(logits, 1);
      r.alphas = torch::stack(alphas, 1);
    }
    ((r.logits * w_logits).sum() + (r.alphas * w_alphas).sum()).backward();
    for (const auto& p : decoder->named_parameters()) r.grads[p.key()] = p.value().grad().clone();
    r.grads["grid"] = grid.grad().clone();
    return r;
  };
  const Run whole = run(true), stepped = run(false);
  CHECK(max_abs_error(whole.logits, stepped.logits) < 1e-5);
  CHECK(max_abs_error(whole.alphas, stepped.alphas) < 1e-6);
  REQUIRE(whole.grads.size() == stepped.grads.size());
  for (const auto& [name, grad] : stepped.grads) {
    INFO(name);
    CHECK(grad.abs().max().item<double>() > 0);
    CHECK(max_abs_error(whole.grads.at(name), grad) < 2e-5 * (1 + grad.abs().max().item<double>()));
  }
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

  // A grid smaller than the captions (P = 2 < T): coverage relative to τ = max(1, T / P).
  {
    const Batch small = random_batch(4, 2, 6, 22);
    const torch::Tensor ok = valid_steps(small.lengths, steps);
    const imcap::AttentionOutput o = decoder->forward(small.grid, small.captions, small.lengths);
    const torch::Tensor t = small.captions.slice(1, 1);
    const torch::Tensor cross =
        torch::nn::functional::cross_entropy(o.logits.index({ok}), t.index({ok}));
    const torch::Tensor tau = ((small.lengths - 1).to(torch::kFloat) / 2.0).clamp_min(1.0);
    const torch::Tensor cover =
        (o.alphas * ok.unsqueeze(2).to(torch::kFloat)).sum(1) / tau.unsqueeze(1);
    const double want = (cross + 0.7 * (1.0 - cover).pow(2).mean()).item<double>();
    const double sgrvinod =
        (cross + 0.7 * (1.0 - (o.alphas * ok.unsqueeze(2).to(torch::kFloat)).sum(1)).pow(2).mean())
            .item<double>();
    REQUIRE(std::abs(want - sgrvinod) > 1e-3);  // the two formulas differ here
    CHECK(decoder->loss(small.grid, small.captions, small.lengths).item<double>() ==
          Approx(want).epsilon(1e-6));
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

TEST_CASE(
    "grid_positions: the decoder knows where it looked, where sgrvinod's is blind to the order "
    "of the positions",
    "[models][attention]") {
  using Catch::Contains;
  const Batch b = random_batch(3, 9, 6, 11);  // a 3 x 3 map
  const torch::Tensor reversed = b.grid.flip({1});
  torch::NoGradGuard no_grad;
  torch::manual_seed(5);
  imcap::AttentionDecoder blind(small_options());
  blind->eval();
  CHECK(torch::allclose(blind->forward(b.grid, b.captions, b.lengths).logits,
                        blind->forward(reversed, b.captions, b.lengths).logits, 1e-4, 1e-5));

  auto o = small_options();
  o.grid_positions = true;
  imcap::AttentionDecoder sighted(o);
  sighted->eval();
  CHECK(sighted->grid_channels() == 26);
  CHECK(sighted->attention->encoder_att->weight.sizes() == torch::IntArrayRef({10, 26}));
  CHECK(sighted->decode_step->weight_ih.sizes() == torch::IntArrayRef({64, 12 + 26}));
  CHECK(sighted->f_beta->weight.sizes() == torch::IntArrayRef({26, 16}));
  const torch::Tensor logits = sighted->forward(b.grid, b.captions, b.lengths).logits;
  CHECK_FALSE(torch::allclose(logits, sighted->forward(reversed, b.captions, b.lengths).logits,
                              1e-3, 1e-4));

  // It is the plain decoder over 26 channels, fed x and y of position i * 3 + j: -1, 0, 1 by
  // column j and by row i, in teacher forcing and in the search's steps alike.
  auto wide = small_options();
  wide.encoder_dim = 26;
  imcap::AttentionDecoder plain(wide);
  plain->eval();
  const auto source = sighted->named_parameters();
  for (auto& p : plain->named_parameters()) p.value().copy_(source[p.key()]);
  const torch::Tensor axis = torch::tensor({-1.0F, 0.0F, 1.0F});
  const torch::Tensor xy =
      torch::stack({axis.repeat({3}), axis.repeat_interleave(3)}, 1).expand({3, 9, 2});
  const torch::Tensor placed = torch::cat({b.grid, xy}, 2);
  CHECK(torch::allclose(logits, plain->forward(placed, b.captions, b.lengths).logits, 1e-5, 1e-6));
  CHECK(torch::equal(imcap::greedy_ids(imcap::AttentionStepper(sighted), b.grid, 6),
                     imcap::greedy_ids(imcap::AttentionStepper(plain), placed, 6)));
  // One position has nowhere to be: (0, 0).
  CHECK(sighted->forward(b.grid.slice(1, 0, 1), b.captions).logits.size(1) == 5);
  CHECK_THROWS_WITH(sighted->forward(b.grid.slice(1, 0, 8), b.captions),
                    Contains("S x S") && Contains("P = 8"));

  // The model file records it; files written before it was an option load as sgrvinod's.
  imcap::test::TinyDataset d(4, 2);
  auto config = imcap::test::tiny_attention_config();
  config.attention.grid_positions = true;
  const imcap::CaptionModel model(config, *d.vocab);  // fills in what the vocabulary decides
  CHECK(model.attention_decoder()->grid_channels() == 514);
  const std::string text = imcap::model_config_to_json(model.config());
  CHECK(text.find("\"grid_positions\": true") != std::string::npos);
  CHECK(imcap::model_config_from_json(text, "m.imcap").attention.grid_positions);
  auto j = nlohmann::json::parse(text);
  j["decoder"].erase("grid_positions");
  CHECK_FALSE(imcap::model_config_from_json(j.dump(), "old.imcap").attention.grid_positions);
  j["decoder"]["grid_positions"] = "yes";
  CHECK_THROWS_WITH(imcap::model_config_from_json(j.dump(), "bad.imcap"),
                    Contains("bad.imcap") && Contains("grid_positions"));
}

TEST_CASE(
    "mean_feature: the grid's mean reaches the gates at every step, and the model file records "
    "it",
    "[models][attention]") {
  using Catch::Contains;
  torch::manual_seed(12);
  auto o = small_options();
  o.dropout = 0.0;
  imcap::AttentionDecoder plain(o);
  CHECK_FALSE(plain->mean_gates);
  for (const auto& p : plain->named_parameters())
    CHECK(p.key().find("mean_gates") == std::string::npos);  // sgrvinod's state dict
  o.mean_feature = true;
  imcap::AttentionDecoder decoder(o);
  decoder->eval();
  REQUIRE(decoder->mean_gates);
  CHECK(decoder->mean_gates->weight.sizes() == torch::IntArrayRef({64, 24}));
  CHECK(decoder->decode_step->weight_ih.sizes() == torch::IntArrayRef({64, 12 + 24}));

  // The equations, written out: sgrvinod's step with mean_gates(mean_p a_p) added to the gates.
  const Batch b = random_batch(3, 6, 5, 13);
  torch::NoGradGuard no_grad;
  const torch::Tensor mean = b.grid.mean(1);
  torch::Tensor h = decoder->init_h(mean), c = decoder->init_c(mean);
  const torch::Tensor extra = decoder->mean_gates(mean);
  const auto& cell = decoder->decode_step;
  std::vector<torch::Tensor> logits;
  for (int64_t t = 0; t + 1 < b.captions.size(1); ++t) {
    auto [attended, alpha] = decoder->attention(b.grid, h);
    const torch::Tensor x = torch::cat({decoder->embedding(b.captions.select(1, t)),
                                        torch::sigmoid(decoder->f_beta(h)) * attended},
                                       1);
    const auto g = (torch::addmm(cell->bias_ih, x, cell->weight_ih.t()) +
                    torch::addmm(cell->bias_hh, h, cell->weight_hh.t()) + extra)
                       .chunk(4, 1);
    c = torch::sigmoid(g[1]) * c + torch::sigmoid(g[0]) * torch::tanh(g[2]);
    h = torch::sigmoid(g[3]) * torch::tanh(c);
    logits.push_back(decoder->fc(h));
  }
  const torch::Tensor expected = torch::stack(logits, 1);
  CHECK(max_abs_error(decoder->forward(b.grid, b.captions).logits, expected) < 1e-5);
  // With mean_gates zero it is sgrvinod's decoder with the same weights.
  decoder->mean_gates->weight.zero_();
  decoder->mean_gates->bias.zero_();
  const auto source = decoder->named_parameters();
  for (auto& p : plain->named_parameters()) p.value().copy_(source[p.key()]);
  plain->eval();
  CHECK(max_abs_error(decoder->forward(b.grid, b.captions).logits,
                      plain->forward(b.grid, b.captions).logits) < 1e-5);
  imcap::StepStart s = decoder->start(b.grid);
  CHECK(s.state.tensors.size() == 6);
  s.state.tensors.pop_back();
  s.state.row_dims.pop_back();
  CHECK_THROWS_WITH(decoder->step(torch::tensor({1, 2, 3}), s.state),
                    Contains("6 tensors") && Contains("mean_gates"));

  // The model file records it; files written before it was an option load without it.
  imcap::test::TinyDataset d(4, 2);
  auto config = imcap::test::tiny_attention_config();
  config.attention.mean_feature = true;
  const imcap::CaptionModel model(config, *d.vocab);
  CHECK(model.attention_decoder()->mean_gates->weight.sizes() == torch::IntArrayRef({64, 512}));
  const std::string text = imcap::model_config_to_json(model.config());
  CHECK(text.find("\"mean_feature\": true") != std::string::npos);
  CHECK(imcap::model_config_from_json(text, "m.imcap").attention.mean_feature);
  auto j = nlohmann::json::parse(text);
  j["decoder"].erase("mean_feature");
  CHECK_FALSE(imcap::model_config_from_json(j.dump(), "old.imcap").attention.mean_feature);
  j["decoder"]["mean_feature"] = 1;
  CHECK_THROWS_WITH(imcap::model_config_from_json(j.dump(), "bad.imcap"),
                    Contains("bad.imcap") && Contains("mean_feature"));
}

namespace {

// imcap train on a TinyDataset: two steps of a ResNet-18 at 64 px, plus the extra options.
imcap::test::ProcessResult train_tiny(imcap::test::TinyDataset& d, const std::string& out,
                                      const std::vector<std::string>& extra, int steps = 2) {
  const auto& f = d.files;
  std::vector<std::string> args = {"train",
                                   "--annotations",
                                   f.train_annotations,
                                   "--images",
                                   f.train_images,
                                   "--out",
                                   d.tmp.file(out),
                                   "--encoder",
                                   "resnet18",
                                   "--image-size",
                                   "64",
                                   "--vocab-threshold",
                                   "1",
                                   "--max-steps",
                                   std::to_string(steps),
                                   "--batch-size",
                                   "8"};
  args.insert(args.end(), extra.begin(), extra.end());
  return imcap::test::run_cli(args);
}

}  // namespace

TEST_CASE("an attention model saves, loads and captions as it did", "[attention][model]") {
  using Catch::Contains;
  imcap::test::TinyDataset d(4, 2);
  torch::manual_seed(3);
  auto config = imcap::test::tiny_attention_config();
  config.attention.mean_feature = GENERATE(false, true);
  INFO("mean_feature " << config.attention.mean_feature);
  auto model = std::make_shared<imcap::CaptionModel>(config, *d.vocab);
  // The model fills in what the vocabulary and the backbone decide, and has no encoder head.
  CHECK(model->decoder_kind() == imcap::DecoderKind::kAttention);
  CHECK(model->config().encoder.embed_size == 0);
  CHECK_FALSE(model->encoder()->embed);
  CHECK(model->attention_decoder()->options().encoder_dim == 512);
  CHECK(model->attention_decoder()->options().start_id == d.vocab->start_id());
  CHECK_THROWS_WITH(model->decoder(), Contains("'attention'"));
  model->train(false);
  torch::NoGradGuard no_grad;
  const torch::Tensor images = torch::randn({2, 3, 64, 64});
  CHECK(model->encode(images).sizes() == torch::IntArrayRef({2, 4, 512}));
  CHECK_THROWS_WITH(model->encode_cached(torch::zeros({2, 512})), Contains("grid (B, P, 512)"));

  imcap::CaptionOptions beam;
  beam.beam_size = 3;
  beam.num_return = 2;
  const imcap::Captioner captioner(model, beam);
  const auto before = captioner.candidates(captioner.encode(images, beam), beam);
  const imcap::test::TempDir dir;
  const std::string path = dir.file("attention.imcap");
  model->save(path);
  std::map<std::string, std::string> meta;
  imcap::load_safetensors(path, &meta);
  CHECK(meta.at("format_version") == "2");
  CHECK(meta.at("config").find("\"kind\": \"attention\"") != std::string::npos);
  const auto loaded = imcap::Captioner::load(path, torch::kCPU, beam);
  CHECK(imcap::model_config_to_json(loaded.model().config()) ==
        imcap::model_config_to_json(model->config()));
  const auto after = loaded.candidates(loaded.encode(images, beam), beam);
  REQUIRE(after.size() == before.size());
  for (std::size_t i = 0; i < after.size(); ++i) {
    REQUIRE(after[i].size() == before[i].size());
    for (std::size_t j = 0; j < after[i].size(); ++j) {
      CHECK(after[i][j].ids == before[i][j].ids);
      CHECK(after[i][j].log_prob == Approx(before[i][j].log_prob).margin(1e-6));
    }
  }
  // Show and Tell files stay format version 1.
  imcap::CaptionModel(imcap::test::tiny_config(), *d.vocab).save(dir.file("show-tell.imcap"));
  imcap::load_safetensors(dir.file("show-tell.imcap"), &meta);
  CHECK(meta.at("format_version") == "1");
  // The grid option pools the map.
  auto pooled = imcap::test::tiny_attention_config();
  pooled.grid = 1;
  imcap::CaptionModel one(pooled, *d.vocab);
  CHECK(one.encode(images).sizes() == torch::IntArrayRef({2, 1, 512}));
}

TEST_CASE("captions carry the attention with which each word was predicted",
          "[attention][captioner]") {
  using Catch::Contains;
  imcap::test::TinyDataset d(4, 2);
  torch::manual_seed(8);
  auto model =
      std::make_shared<imcap::CaptionModel>(imcap::test::tiny_attention_config(), *d.vocab);
  model->train(false);
  torch::NoGradGuard no_grad;
  const torch::Tensor images = torch::randn({3, 3, 64, 64});
  for (const int beam : {1, 3}) {
    INFO("beam " << beam);
    imcap::CaptionOptions o;
    o.beam_size = beam;
    o.num_return = beam;
    o.max_length = 6;
    const imcap::Captioner captioner(model, o);
    const torch::Tensor grid = captioner.encode(images, o);
    const auto plain = captioner.candidates(grid, o);
    o.attention_weights = true;
    const auto with = captioner.candidates(grid, o);
    REQUIRE(with.size() == plain.size());
    std::size_t words = 0;
    for (std::size_t i = 0; i < with.size(); ++i) {
      REQUIRE(with[i].size() == plain[i].size());
      for (std::size_t j = 0; j < with[i].size(); ++j) {
        const imcap::Caption& c = with[i][j];
        CHECK(c.ids == plain[i][j].ids);  // the search itself is unchanged
        CHECK_FALSE(plain[i][j].attention.defined());
        REQUIRE(c.attention.defined());
        REQUIRE(c.attention.sizes() ==
                torch::IntArrayRef({static_cast<std::int64_t>(c.ids.size()), 4}));
        words += c.ids.size();
        if (c.ids.empty()) continue;
        CHECK(torch::allclose(c.attention.sum(1), torch::ones({c.attention.size(0)}), 1e-5, 1e-6));
        // Step by step along the caption's own words: the weights of each step's prediction.
        auto dec = model->attention_decoder();
        imcap::StepStart st = dec->start(
            grid.slice(0, static_cast<std::int64_t>(i), static_cast<std::int64_t>(i) + 1));
        for (std::size_t t = 0; t < c.ids.size(); ++t) {
          const auto& alpha = imcap::AttentionDecoderImpl::attention_weights(st.state);
          CHECK(torch::allclose(alpha[0], c.attention[static_cast<std::int64_t>(t)], 1e-5, 1e-7));
          dec->step(torch::tensor({c.ids[t]}, torch::kLong), st.state);
        }
      }
    }
    CHECK(words > 0);
  }
  imcap::CaptionOptions asked;
  asked.attention_weights = true;
  const imcap::Captioner show_tell(
      std::make_shared<imcap::CaptionModel>(imcap::test::tiny_config(), *d.vocab), asked);
  CHECK_THROWS_WITH(show_tell.caption(images[0]),
                    Contains("attention_weights") && Contains("'show-tell'"));
}

TEST_CASE("the trainer trains an attention model, resumes it exactly, and fine-tunes it with SCST",
          "[attention][trainer]") {
  imcap::test::TinyDataset d(12, 4);
  auto make = [&] {
    torch::manual_seed(5);
    return imcap::CaptionModel(imcap::test::tiny_attention_config(), *d.vocab);
  };
  auto model_a = make();
  const imcap::CocoDataset train(d.files.train_annotations, d.files.train_images, *d.vocab,
                                 model_a.eval_transform());
  const imcap::CocoDataset val(d.files.val_annotations, d.files.val_images, *d.vocab,
                               model_a.eval_transform());
  auto o = imcap::test::tiny_trainer_options(d.tmp.file("a"));
  o.epochs = 3;
  o.lr = 3e-3;
  o.val_max_images = 4;
  const auto full = imcap::Trainer(model_a, train, &val, o).fit();
  REQUIRE(full.losses.size() >= 6);
  CHECK(full.losses.back() < full.losses.front());
  CHECK(full.has_validation);
  // Stopped after 2 steps and resumed: the same losses.
  auto model_b = make();
  auto ob = o;
  ob.out_dir = d.tmp.file("b");
  ob.max_steps = 2;
  const auto first = imcap::Trainer(model_b, train, &val, ob).fit();
  REQUIRE(first.losses.size() == 2);
  auto model_c = imcap::CaptionModel::load(d.tmp.file("b/last.imcap"));
  CHECK(model_c.decoder_kind() == imcap::DecoderKind::kAttention);
  ob.max_steps = 0;
  ob.resume = true;
  const auto rest = imcap::Trainer(model_c, train, &val, ob).fit();
  auto joined = first.losses;
  joined.insert(joined.end(), rest.losses.begin(), rest.losses.end());
  CHECK(joined == full.losses);

  // SCST from the trained model: rewards, and the teacher-forced rescoring (no dropout here)
  // equals autograd through the sampling.
  auto scst = imcap::CaptionModel::load(d.tmp.file("a/last.imcap"));
  auto os = imcap::test::tiny_trainer_options(d.tmp.file("scst"));
  os.objective = imcap::Objective::kScst;
  os.epochs = 1;
  os.lr = 1e-3;
  os.scst.samples = 3;
  os.scst.max_length = 8;
  const auto tuned = imcap::Trainer(scst, train, &val, os).fit();
  REQUIRE_FALSE(tuned.losses.empty());
  CHECK(std::isfinite(tuned.last_reward));
  const imcap::detail::ScstReward reward(train, os.scst);
  const std::vector<std::int64_t> ids(train.image_ids().begin(), train.image_ids().begin() + 4);
  const torch::Tensor base = torch::randn({4, 4, 512});
  auto run = [&](bool rescore) {
    scst.train(true);
    for (auto& p : scst.decoder_module().parameters()) p.mutable_grad() = torch::Tensor();
    const auto features = base.clone().requires_grad_(true);
    auto s = imcap::detail::scst_loss(scst, features, ids, os.scst, reward,
                                      at::make_generator<at::CPUGeneratorImpl>(9), rescore);
    s.loss.backward();
    std::vector<torch::Tensor> grads{features.grad().clone()};
    for (const auto& p : scst.decoder_module().parameters()) grads.push_back(p.grad().clone());
    return std::make_pair(s, grads);
  };
  const auto [fast, fast_grads] = run(true);
  const auto [slow, slow_grads] = run(false);
  CHECK(torch::equal(fast.tokens, slow.tokens));
  CHECK(fast.loss.item<double>() == Approx(slow.loss.item<double>()).margin(1e-6));
  REQUIRE(fast_grads.size() == slow_grads.size());
  for (std::size_t i = 0; i < fast_grads.size(); ++i) {
    INFO("gradient " << i);
    CHECK(torch::allclose(fast_grads[i], slow_grads[i], 1e-4, 1e-6));
  }
}

TEST_CASE("imcap train --decoder attention, then caption", "[attention][cli]") {
  imcap::test::TinyDataset d(8, 2);
  const auto& f = d.files;
  auto train = [&](const std::string& out, const std::vector<std::string>& extra) {
    return train_tiny(d, out, extra);
  };
  const auto ok = train("att", {"--decoder", "attention", "--attention-dim", "8", "--embed-size",
                                "12", "--hidden-size", "16", "--grid", "2", "--attention-reg",
                                "0.5", "--grid-positions", "--mean-feature"});
  INFO(ok.out << ok.err);
  REQUIRE(ok.exit_code == 0);
  CHECK(ok.out.find("attention, grid 2x2, with positions, the grid's mean at every step") !=
        std::string::npos);
  const auto model = imcap::CaptionModel::load(d.tmp.file("att/last.imcap"));
  REQUIRE(model.decoder_kind() == imcap::DecoderKind::kAttention);
  CHECK(model.config().grid == 2);
  CHECK(model.attention_decoder()->options().grid_positions);
  CHECK(model.attention_decoder()->options().mean_feature);
  CHECK(model.attention_decoder()->grid_channels() == 514);
  CHECK(model.attention_decoder()->options().attention_dim == 8);
  CHECK(model.attention_decoder()->options().embed_size == 12);
  CHECK(model.attention_decoder()->options().attention_reg == 0.5);
  CHECK(model.attention_decoder()->options().dropout == 0.5);  // sgrvinod's, unless given
  const auto caption = imcap::test::run_cli(
      {"caption", "--model", d.tmp.file("att/last.imcap"), f.val_images + "/1000000.jpg"});
  INFO(caption.err);
  CHECK(caption.exit_code == 0);
  CHECK_FALSE(caption.out.empty());
  // Show and Tell's own options are refused with attention, naming them.
  const auto refused = train("bad", {"--decoder", "attention", "--inject", "par"});
  CHECK(refused.exit_code == 2);
  CHECK(refused.err.find("--inject applies to --decoder show-tell only") != std::string::npos);
  // and the attention's with Show and Tell.
  const auto not_attention = train("bad", {"--mean-feature"});
  CHECK(not_attention.exit_code == 2);
  CHECK(not_attention.err.find("--mean-feature applies to --decoder attention only") !=
        std::string::npos);
  CHECK(train("bad", {"--decoder", "lstm"}).exit_code == 2);
}

TEST_CASE("imcap caption --attention draws each word's attention", "[attention][cli]") {
  imcap::test::TinyDataset d(8, 2);
  const auto& f = d.files;
  const auto trained = train_tiny(d, "att",
                                  {"--decoder", "attention", "--attention-dim", "8", "--embed-size",
                                   "12", "--hidden-size", "16"},
                                  /*steps=*/1);
  INFO(trained.out << trained.err);
  REQUIRE(trained.exit_code == 0);
  const std::string model = d.tmp.file("att/last.imcap");
  // The same file name in two folders gets two pages.
  const std::string copy_dir = d.tmp.file("copy");
  imcap::detail::create_directories(copy_dir);
  imcap::detail::write_file_atomic(copy_dir + "/1000000.jpg",
                                   imcap::detail::read_file(f.val_images + "/1000000.jpg"));
  const std::string dir = d.tmp.file("pictures");
  const auto run = imcap::test::run_cli({"caption", "--model", model, "--attention", dir, "--json",
                                         "--max-length", "6", "--min-length", "2",
                                         f.val_images + "/1000000.jpg", copy_dir + "/1000000.jpg"});
  INFO(run.out << run.err);
  REQUIRE(run.exit_code == 0);
  const auto results = nlohmann::json::parse(run.out);
  REQUIRE(results.size() == 2);
  for (const std::string stem : {"1000000", "1000000-2"}) {
    INFO(stem);
    const auto words = results[stem == "1000000" ? 0 : 1]["tokens"].size();
    const std::string html = imcap::detail::read_file(dir + "/" + stem + ".html");
    std::size_t rects = 0;
    for (auto at = html.find("<rect"); at != std::string::npos; at = html.find("<rect", at + 1))
      ++rects;
    CHECK(rects == words * 4);  // one cell per word and grid cell (2 x 2)
    // --min-length 2: words to draw whatever one training step made of the model.
    REQUIRE(words >= 2);
    CHECK(html.find("<figcaption>") != std::string::npos);
    const imcap::Image strip = imcap::decode_image(dir + "/" + stem + ".png");
    const int cols = static_cast<int>(std::min<std::size_t>(8, words));
    const int rows = static_cast<int>((words + 7) / 8);
    CHECK(strip.width == cols * 224 + (cols + 1) * 4);
    CHECK(strip.height == rows * (224 + 26) + (rows + 1) * 4);
  }
  const std::string index = imcap::detail::read_file(dir + "/index.html");
  CHECK(index.find("href='1000000.html'") != std::string::npos);
  CHECK(index.find("href='1000000-2.html'") != std::string::npos);

  // A Show-and-Tell model has no attention to draw (bad input: exit 1); an output that is an
  // input is refused before anything is written (exit 2).
  const auto show_tell = imcap::test::run_cli(
      {"train", "--annotations", f.train_annotations, "--images", f.train_images, "--out",
       d.tmp.file("st"), "--encoder", "resnet18", "--image-size", "64", "--vocab-threshold", "1",
       "--max-steps", "1", "--batch-size", "8"});
  REQUIRE(show_tell.exit_code == 0);
  const auto refused = imcap::test::run_cli({"caption", "--model", d.tmp.file("st/last.imcap"),
                                             "--attention", dir, f.val_images + "/1000000.jpg"});
  CHECK(refused.exit_code == 1);
  CHECK(refused.err.find("'show-tell' decoder") != std::string::npos);
  imcap::detail::write_file_atomic(copy_dir + "/x.png",
                                   imcap::detail::read_file(dir + "/1000000.png"));
  const std::string before = imcap::detail::read_file(copy_dir + "/x.png");
  const auto clash = imcap::test::run_cli(
      {"caption", "--model", model, "--attention", copy_dir, copy_dir + "/x.png"});
  CHECK(clash.exit_code == 2);
  CHECK(clash.err.find("would destroy the input") != std::string::npos);
  CHECK(imcap::detail::read_file(copy_dir + "/x.png") == before);
}
