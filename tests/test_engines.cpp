// The decoder's engines on their own (src/detail/): the inference step (DecodeStep's LSTM cell
// and projection, step_affine), and the training loss (projected_cross_entropy, LossBuffer).
// The modules' tests check them again through Decoder::start/step and Decoder::loss.
#include <torch/torch.h>
#include "catch.hpp"

#include <vector>

#include "detail/decode_step.hpp"
#include "detail/projected_cross_entropy.hpp"
#include "support.hpp"

namespace {

double max_abs_error(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

}  // namespace

TEST_CASE("DecodeStep's LSTM step is PyTorch's LSTM cell, layer by layer", "[engines]") {
  torch::manual_seed(3);
  torch::NoGradGuard no_grad;
  for (const int64_t layers : {1, 2}) {
    for (const int64_t rows : {1, 5}) {
      INFO("layers " << layers << ", rows " << rows);
      torch::nn::LSTM lstm(torch::nn::LSTMOptions(7, 9).num_layers(layers).batch_first(true));
      const torch::Tensor inputs = torch::randn({rows, 7});
      const torch::Tensor h = torch::randn({layers, rows, 9});
      const torch::Tensor c = torch::randn({layers, rows, 9});
      imcap::detail::DecodeStep engine;
      torch::Tensor h_next, c_next;
      const torch::Tensor out = engine.lstm(inputs, h, c, lstm->all_weights(), h_next, c_next);
      auto [want_out, want_hc] = lstm->forward(inputs.unsqueeze(1), std::make_tuple(h, c));
      CHECK(max_abs_error(out, want_out.squeeze(1)) < 1e-6);
      CHECK(max_abs_error(h_next, std::get<0>(want_hc)) < 1e-6);
      CHECK(max_abs_error(c_next, std::get<1>(want_hc)) < 1e-6);
      CHECK(torch::equal(h_next[layers - 1], out));
    }
  }
}

TEST_CASE("DecodeStep's projection and step_affine are x w^T + b", "[engines]") {
  torch::manual_seed(4);
  torch::NoGradGuard no_grad;
  const torch::Tensor w = torch::randn({300, 40});
  const torch::Tensor b = torch::randn({300});
  imcap::detail::DecodeStep engine;
  for (const int64_t rows : {1, 3, 17}) {
    INFO("rows " << rows);
    const torch::Tensor x = torch::randn({rows, 40});
    const torch::Tensor want = torch::addmm(b, x, w.t());
    CHECK(max_abs_error(imcap::detail::step_affine(x, w, b), want) < 1e-4);
    const torch::Tensor got = engine.project(x, w, b, imcap::DecodeWeights::kFloat32);
    CHECK(got.sizes() == want.sizes());
    CHECK(max_abs_error(got, want) < 1e-4);
    // The compressed copies keep each row's best scores: the arg-max is float32's.
    for (const auto weights : {imcap::DecodeWeights::kBFloat16, imcap::DecodeWeights::kInt8}) {
      const torch::Tensor compressed = engine.project(x, w, b, weights);
      CHECK(torch::equal(compressed.argmax(1), got.argmax(1)));
      CHECK(max_abs_error(compressed, got) < 0.5);  // bounds: test_decoder.cpp
    }
  }
  // A changed weight is seen by the next call (the compressed copy is rebuilt).
  const torch::Tensor x = torch::randn({1, 40});
  const torch::Tensor before = engine.project(x, w, b, imcap::DecodeWeights::kInt8);
  w.mul_(-1);
  const torch::Tensor after = engine.project(x, w, b, imcap::DecodeWeights::kInt8);
  CHECK(torch::equal(after.argmax(1), torch::addmm(b, x, w.t()).argmax(1)));
  CHECK(max_abs_error(after, before) > 0.1);
}

TEST_CASE("projected_cross_entropy is cross_entropy of the projection, value and gradients",
          "[engines]") {
  torch::manual_seed(5);
  const torch::Tensor h0 = torch::randn({12, 16});
  const torch::Tensor w0 = torch::randn({50, 16}) * 0.3;
  const torch::Tensor b0 = torch::randn({50});
  torch::Tensor targets = torch::randint(0, 50, {12}, torch::kLong);
  targets[3] = imcap::detail::kIgnoreIndex;
  targets[8] = imcap::detail::kIgnoreIndex;
  auto leaves = [&] {
    return std::vector<torch::Tensor>{h0.clone().requires_grad_(), w0.clone().requires_grad_(),
                                      b0.clone().requires_grad_()};
  };
  auto want = leaves();
  const torch::Tensor want_loss = torch::nn::functional::cross_entropy(
      torch::addmm(want[2], want[0], want[1].t()), targets,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(imcap::detail::kIgnoreIndex));
  want_loss.backward();
  imcap::detail::LossBuffer buffer;
  for (int round = 0; round < 2; ++round) {  // the second reuses the kept buffer
    INFO("round " << round);
    auto got = leaves();
    const torch::Tensor loss = imcap::detail::projected_cross_entropy(
        got[0], got[1], got[2], targets, buffer.get(12, 50, h0.options()));
    CHECK(loss.item<double>() == Approx(want_loss.item<double>()).epsilon(1e-6));
    loss.backward();
    for (std::size_t i = 0; i < got.size(); ++i) {
      INFO("gradient " << i);
      CHECK(max_abs_error(got[i].grad(), want[i].grad()) < 1e-5);
    }
  }
}

TEST_CASE("LossBuffer hands back its buffer only when nothing else holds it", "[engines]") {
  imcap::detail::LossBuffer buffer;
  const auto options = torch::TensorOptions(torch::kFloat);
  const void* kept = nullptr;
  {
    const torch::Tensor a = buffer.get(4, 10, options);
    CHECK(a.sizes() == torch::IntArrayRef({4, 10}));
    // Held by `a`: a second request gets new memory, which is kept instead.
    const torch::Tensor b = buffer.get(4, 10, options);
    CHECK(b.data_ptr() != a.data_ptr());
    kept = b.data_ptr();
  }
  // Released, and large enough: the kept buffer comes back (for fewer rows too).
  const torch::Tensor again = buffer.get(3, 10, options);
  CHECK(again.data_ptr() == kept);
  const torch::Tensor bigger = buffer.get(8, 10, options);  // `again` holds it: a new, larger one
  CHECK(again.sizes() == torch::IntArrayRef({3, 10}));
  CHECK(bigger.sizes() == torch::IntArrayRef({8, 10}));
  CHECK(bigger.data_ptr() != again.data_ptr());
}
