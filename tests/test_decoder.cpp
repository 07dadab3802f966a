// The Show and Tell decoder: names, parity with the notebooks' DecoderRNN, steps, the loss, the
// sequence LSTM, compressed decode weights, errors.
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
    options.image_inject = imcap::ImageInject::kPre;  // the notebooks' DecoderRNN
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

    const imcap::DecoderStepper steps(decoder);
    CHECK(torch::equal(imcap::greedy_ids(steps, features, /*max_length=*/20), data.at("greedy")));
    // With <end>, each row stops as soon as it emits it, as the notebook's loop breaks (the
    // Python side fills the rest of a stopped row with end_id).
    const int64_t end_id = data.at("end_id").item<int64_t>();
    imcap::SearchOptions plain;
    plain.beam_size = 1;
    plain.forbid_unk = false;
    imcap::SpecialTokens end_only;
    end_only.end = end_id;
    const auto found = imcap::greedy_search(steps, features, plain, end_only);
    const torch::Tensor& stopped = data.at("stopped");
    REQUIRE(found.size() == static_cast<std::size_t>(stopped.size(0)));
    bool some_stopped = false;
    for (std::size_t b = 0; b < found.size(); ++b) {
      std::vector<int64_t> row = found[b].tokens;
      some_stopped = some_stopped || found[b].finished;
      while (row.size() < static_cast<std::size_t>(stopped.size(1))) row.push_back(end_id);
      CHECK(torch::equal(torch::tensor(row, torch::kLong), stopped[static_cast<int64_t>(b)]));
    }
    CHECK(some_stopped);
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
    imcap::StepStart s = decoder->start(features);
    CHECK(max_abs_error(s.scores, logits.select(1, 0)) < 1e-5);
    CHECK(s.state.num_rows() == 3);
    CHECK(s.state.tensors.size() == (inject == imcap::ImageInject::kPar ? 3u : 2u));
    for (int64_t t = 1; t < 6; ++t) {
      const torch::Tensor scores = decoder->step(captions.select(1, t - 1), s.state);
      CHECK(max_abs_error(scores, logits.select(1, t)) < 1e-5);
    }
    // Reordering the state (beam search) reorders the rows.
    const torch::Tensor order = torch::tensor({2, 0}, torch::kLong);
    imcap::DecodeState picked = s.state;
    picked.select_rows(order);
    const auto a = decoder->step(captions.select(1, 5).index_select(0, order), picked);
    const auto b = decoder->step(captions.select(1, 5), s.state);
    CHECK(max_abs_error(a, b.index_select(0, order)) < 1e-6);
    // Greedy decoding is the arg-max chain of steps.
    const torch::Tensor ids = imcap::greedy_ids(imcap::DecoderStepper(decoder), features, 4);
    imcap::StepStart g = decoder->start(features);
    torch::Tensor scores = g.scores;
    for (int64_t t = 0; t < 4; ++t) {
      const torch::Tensor next = std::get<1>(scores.max(1));
      CHECK(torch::equal(ids.select(1, t), next));
      scores = decoder->step(next, g.state);
    }
  }
}

TEST_CASE("decoder state-dict names follow the notebooks", "[models]") {
  imcap::DecoderOptions options;
  options.vocab_size = 11;
  options.embed_size = 4;
  options.hidden_size = 6;
  options.image_inject = imcap::ImageInject::kPre;  // the notebooks' DecoderRNN
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

TEST_CASE("the decoder's wrong shapes and options give clear errors", "[models]") {
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
  auto s = decoder->start(f);
  CHECK_THROWS_AS(decoder->step(torch::tensor({1, -1}, torch::kLong), s.state),
                  imcap::InvalidArgument);
  CHECK_THROWS_AS(decoder->step(torch::zeros({3}, torch::kLong), s.state), imcap::InvalidArgument);
  CHECK_THROWS_AS(decoder->step_embedded(torch::zeros({2, 3}), s.state), imcap::InvalidArgument);
  imcap::DecodeState missing = s.state;
  missing.tensors.pop_back();
  missing.row_dims.pop_back();
  CHECK_THROWS_WITH(
      decoder->step(torch::zeros({2}, torch::kLong), missing),
      Catch::Contains("expected 3 tensors (h, c, image)") && Catch::Contains("got 2"));
  const imcap::DecoderStepper steps(decoder);
  CHECK_THROWS_AS(imcap::greedy_ids(steps, f, 0), imcap::InvalidArgument);
  imcap::SpecialTokens beyond;
  beyond.end = 10;
  CHECK_THROWS_WITH(imcap::search(steps, f, imcap::SearchOptions{}, beyond),
                    Catch::Contains("SpecialTokens::end = 10") && Catch::Contains("[0, 10)"));
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
    imcap::StepStart module = decoder->start(features);
    const torch::Tensor module_step = decoder->step(ids, module.state);
    REQUIRE(module_step.requires_grad());
    torch::NoGradGuard no_grad;
    imcap::StepStart fast = decoder->start(features);
    const torch::Tensor fast_step = decoder->step(ids, fast.state);
    CHECK(max_abs_error(fast.scores, module.scores) < 1e-5);
    CHECK(max_abs_error(fast_step, module_step) < 1e-5);
    for (const std::size_t i : {0u, 1u}) {  // h and c
      CHECK(max_abs_error(fast.state.tensors[i], module.state.tensors[i]) < 1e-6);
      CHECK(fast.state.tensors[i].sizes() == torch::IntArrayRef({2, rows, 10}));
    }
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
      auto ref_start = decoder->start(features);
      const torch::Tensor ref_start_scores = ref_start.scores;
      const torch::Tensor ref_h0 = ref_start.state.tensors[0];
      const auto ref_step = decoder->step(ids, ref_start.state);
      auto start = decoder->start(features, weights);
      const torch::Tensor start_scores = start.scores;
      CHECK(torch::equal(start.state.tensors[0], ref_h0));
      const auto step = decoder->step(ids, start.state, weights);
      CHECK(torch::equal(start.state.tensors[0], ref_start.state.tensors[0]));
      for (const auto& [got, ref] :
           {std::pair{start_scores, ref_start_scores}, std::pair{step, ref_step}}) {
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
  const auto before = decoder->start(features, imcap::DecodeWeights::kInt8).scores;
  decoder->linear->weight.mul_(-1);
  const auto ref = decoder->start(features).scores;
  const auto after = decoder->start(features, imcap::DecodeWeights::kInt8).scores;
  CHECK(torch::equal(std::get<1>(after.max(1)), std::get<1>(ref.max(1))));
  CHECK(max_abs_error(after, ref) < 2e-2);
  CHECK(max_abs_error(after, before) > 0.1);
  // More rows than the compressed path takes, and weights it cannot hold, run in float32.
  const torch::Tensor many = torch::randn({imcap::detail::kMaxCompressedDecodeRows + 1, 24});
  CHECK(torch::equal(decoder->start(many, imcap::DecodeWeights::kInt8).scores,
                     decoder->start(many).scores));
  decoder->linear->weight[3][2].fill_(std::numeric_limits<float>::infinity());
  CHECK(torch::allclose(decoder->start(features, imcap::DecodeWeights::kBFloat16).scores,
                        decoder->start(features).scores, 0.0, 0.0, /*equal_nan=*/true));
  CHECK(imcap::parse_decode_weights("int8") == imcap::DecodeWeights::kInt8);
  CHECK_THROWS_WITH(imcap::parse_decode_weights("fp8"),
                    Catch::Contains("'fp8'") && Catch::Contains("float32, bfloat16 or int8"));
}

TEST_CASE("greedy search chooses float32's words with compressed decode weights", "[models]") {
  imcap::Decoder decoder = eval_decoder(/*vocab=*/500, /*embed=*/16, /*hidden=*/64, /*seed=*/23);
  check_decode_weights_keep_greedy_words(
      [&](imcap::DecodeWeights w) { return imcap::DecoderStepper(decoder, w); },
      torch::randn({6, 16}));
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
