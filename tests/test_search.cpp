// Greedy and beam search on tiny hand-built decoders: a table-driven Markov model and small
// random LSTMs, checked against exhaustive enumeration and against the notebook's sample().
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <set>
#include <thread>

#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include "catch.hpp"

#include "detail/cuda_graph_greedy.hpp"
#include "imcap/attention_decoder.hpp"
#include "imcap/captioner.hpp"
#include "imcap/error.hpp"
#include "imcap/search.hpp"
#include "support.hpp"

namespace {

using imcap::DecodeState;
using imcap::Hypothesis;
using imcap::SearchOptions;
using imcap::StepDecoder;
using imcap::StepStart;

// A first-order Markov model per image: features [B] hold each image's table index; the
// first token comes from init[i], the next one from trans[i][previous token]. The table index
// is the state (one row per hypothesis), so a search that mixes up rows gets wrong answers.
class MarkovDecoder : public StepDecoder {
 public:
  // init: [I, V] log-probabilities, trans: [I, V, V] log-probabilities.
  MarkovDecoder(torch::Tensor init, torch::Tensor trans)
      : init_(std::move(init)), trans_(std::move(trans)) {}

  StepStart start(const torch::Tensor& features) const override {
    const auto table = features.reshape({-1}).to(torch::kInt64);
    StepStart out;
    out.scores = init_.index_select(0, table);
    out.state.add(table, /*row_dim=*/0);
    return out;
  }
  torch::Tensor step(const torch::Tensor& tokens, DecodeState& state) const override {
    return trans_.index({state.tensors.at(0), tokens});
  }

 private:
  torch::Tensor init_;
  torch::Tensor trans_;
};

torch::Tensor log_probs_from(const std::vector<std::vector<double>>& probs) {
  std::vector<float> flat;
  for (const auto& row : probs) flat.insert(flat.end(), row.begin(), row.end());
  const auto rows = static_cast<std::int64_t>(probs.size());
  return torch::tensor(flat).view({rows, -1}).log();
}

// Random Markov tables with `images` images over `vocab` tokens, seeded.
MarkovDecoder random_markov(std::int64_t images, std::int64_t vocab, std::uint64_t seed,
                            double temperature = 1.5) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto init = torch::randn({images, vocab}, gen) * temperature;
  auto trans = torch::randn({images, vocab, vocab}, gen) * temperature;
  return MarkovDecoder(torch::log_softmax(init, -1), torch::log_softmax(trans, -1));
}

torch::Tensor table_ids(std::int64_t images) { return torch::arange(images, torch::kInt64); }

// The seed notebook's DecoderRNN (Embedding, one-layer batch-first LSTM, Linear) with random
// weights; the image feature is the LSTM input at step 0. Options add what the notebook lacks,
// to make the searches work harder: a per-row memory (the feature, added to every input, state
// row_dim 0 next to h and c with row_dim 1) and fixed logit biases.
struct SeedNetImpl : torch::nn::Module {
  SeedNetImpl(std::int64_t vocab, std::int64_t embed, std::int64_t hidden)
      : embed(register_module("embed", torch::nn::Embedding(vocab, embed))),
        lstm(register_module(
            "lstm", torch::nn::LSTM(torch::nn::LSTMOptions(embed, hidden).batch_first(true)))),
        linear(register_module("linear", torch::nn::Linear(hidden, vocab))) {}
  torch::nn::Embedding embed;
  torch::nn::LSTM lstm;
  torch::nn::Linear linear;
};
TORCH_MODULE(SeedNet);

class SeedDecoder : public StepDecoder {
 public:
  SeedDecoder(std::int64_t vocab, std::int64_t embed, std::int64_t hidden, std::uint64_t seed,
              bool memory = false, std::vector<std::pair<std::int64_t, float>> biases = {})
      : net_(make_net(vocab, embed, hidden, seed)), memory_(memory), bias_(torch::zeros({vocab})) {
    for (const auto& [id, value] : biases) bias_[id] = value;
    net_->eval();
  }
  // ModuleHolder's const operator-> gives const modules, whose forward() is not const.
  StepStart start(const torch::Tensor& features) const override {
    auto [out, hc] = net_.ptr()->lstm->forward(features.unsqueeze(1));
    StepStart s;
    s.scores = net_.ptr()->linear->forward(out.squeeze(1)) + bias_;
    s.state.add(std::get<0>(hc), 1);
    s.state.add(std::get<1>(hc), 1);
    if (memory_) s.state.add(features, 0);
    return s;
  }
  torch::Tensor step(const torch::Tensor& tokens, DecodeState& state) const override {
    auto& net = *net_.ptr();
    auto x = net.embed->forward(tokens);
    if (memory_) x = x + 0.5 * state.tensors.at(2);
    auto [out, hc] =
        net.lstm->forward(x.unsqueeze(1), std::make_tuple(state.tensors[0], state.tensors[1]));
    state.tensors[0] = std::get<0>(hc);
    state.tensors[1] = std::get<1>(hc);
    return net.linear->forward(out.squeeze(1)) + bias_;
  }
  const SeedNet& net() const { return net_; }
  void to(const torch::Device& device) {
    net_->to(device);
    bias_ = bias_.to(device);
  }

 private:
  static SeedNet make_net(std::int64_t vocab, std::int64_t embed, std::int64_t hidden,
                          std::uint64_t seed) {
    torch::manual_seed(seed);
    return SeedNet(vocab, embed, hidden);
  }
  SeedNet net_;
  bool memory_;
  torch::Tensor bias_;
};

// A search's options and special tokens in one value. Greedy, with <unk> allowed, unless a
// test says otherwise.
struct Opts : SearchOptions {
  std::int64_t end_id = -1, unk_id = -1, start_id = -1;
  Opts() {
    beam_size = 1;
    forbid_unk = false;
  }
  imcap::SpecialTokens tokens() const { return imcap::SpecialTokens{start_id, end_id, unk_id}; }
};

Opts ids(std::int64_t end, std::int64_t unk = -1, std::int64_t start = -1) {
  Opts o;
  o.end_id = end;
  o.unk_id = unk;
  o.start_id = start;
  return o;
}

std::vector<std::vector<Hypothesis>> run_search(const StepDecoder& d, const torch::Tensor& f,
                                                const Opts& o) {
  return imcap::search(d, f, o, o.tokens());
}
std::vector<std::vector<Hypothesis>> run_beam(const StepDecoder& d, const torch::Tensor& f,
                                              const Opts& o) {
  return imcap::beam_search(d, f, o, o.tokens());
}
std::vector<Hypothesis> run_greedy(const StepDecoder& d, const torch::Tensor& f, const Opts& o) {
  return imcap::greedy_search(d, f, o, o.tokens());
}

torch::Tensor random_features(std::int64_t batch, std::int64_t embed, std::uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randn({batch, embed}, gen);
}

// Every token sequence a search could return for one image (the decoder's features row
// `image`), with the same rules: masks, <end> handling, <start> stripping, scores. Sorted like
// beam_search's results: finished first, then by score.
std::vector<Hypothesis> exhaustive(const StepDecoder& decoder, const torch::Tensor& features,
                                   std::int64_t image, const Opts& o) {
  torch::NoGradGuard no_grad;
  std::vector<Hypothesis> all;
  auto make = [&](std::vector<std::int64_t> tokens, double lp, bool finished) {
    Hypothesis h;
    if (o.start_id >= 0 && !tokens.empty() && tokens[0] == o.start_id) tokens.erase(tokens.begin());
    h.tokens = std::move(tokens);
    h.log_prob = lp;
    h.finished = finished;
    const double length =
        std::max<double>(1.0, static_cast<double>(h.tokens.size()) + (finished ? 1 : 0));
    h.score = lp / std::pow(length, o.alpha);
    return h;
  };
  std::function<void(DecodeState, torch::Tensor, std::vector<std::int64_t>, double)> walk =
      [&](DecodeState state, torch::Tensor scores, std::vector<std::int64_t> prefix, double lp) {
        auto logp = torch::log_softmax(scores.to(torch::kFloat), 1)[0];
        const std::int64_t words =
            static_cast<std::int64_t>(prefix.size()) -
            (o.start_id >= 0 && !prefix.empty() && prefix[0] == o.start_id ? 1 : 0);
        for (std::int64_t v = 0; v < logp.size(0); ++v) {
          if (o.forbid_unk && v == o.unk_id) continue;
          if (v == o.start_id && !prefix.empty()) continue;
          if (v == o.end_id && words < o.min_length) continue;
          const double l = lp + logp[v].item<float>();
          if (!std::isfinite(l)) continue;
          if (v == o.end_id) {
            all.push_back(make(prefix, l, true));
            continue;
          }
          auto next = prefix;
          next.push_back(v);
          if (static_cast<int>(next.size()) == o.max_length) {
            all.push_back(make(next, l, false));
            continue;
          }
          DecodeState s = state;
          auto next_scores = decoder.step(torch::tensor({v}, torch::kInt64), s);
          walk(s, next_scores, next, l);
        }
      };
  StepStart first = decoder.start(features.narrow(0, image, 1));
  walk(first.state, first.scores, {}, 0.0);
  std::stable_sort(all.begin(), all.end(), [](const Hypothesis& a, const Hypothesis& b) {
    if (a.finished != b.finished) return a.finished;
    return a.score > b.score;
  });
  return all;
}

std::string show(const Hypothesis& h) {
  std::string s = "[";
  for (auto t : h.tokens) s += std::to_string(t) + " ";
  return s + "] lp=" + std::to_string(h.log_prob) + " score=" + std::to_string(h.score) +
         (h.finished ? " end" : " cut");
}

void require_same(const std::vector<Hypothesis>& got, const std::vector<Hypothesis>& want,
                  double tolerance = 1e-4) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("hypothesis " << i << ": got " << show(got[i]) << ", want " << show(want[i]));
    CHECK(got[i].tokens == want[i].tokens);
    CHECK(got[i].finished == want[i].finished);
    CHECK(got[i].log_prob == Approx(want[i].log_prob).margin(tolerance));
    CHECK(got[i].score == Approx(want[i].score).margin(tolerance));
  }
}

// got must be the best n of `all` (sorted by exhaustive()). Sequences whose scores tie (a
// Markov model gives "a b a" and "b a b" the same transitions) may come in either order.
// Token lists are distinct unless a stripped <start> makes two sequences look alike.
void require_best_of(const std::vector<Hypothesis>& got, const std::vector<Hypothesis>& all,
                     std::size_t n, bool distinct = true, double tolerance = 1e-4) {
  REQUIRE(got.size() == std::min(n, all.size()));
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("hypothesis " << i << ": got " << show(got[i]) << ", want " << show(all[i]));
    CHECK(got[i].finished == all[i].finished);
    CHECK(got[i].score == Approx(all[i].score).margin(tolerance));
    const auto same = std::find_if(all.begin(), all.end(), [&](const Hypothesis& h) {
      return h.tokens == got[i].tokens && h.finished == got[i].finished &&
             std::abs(h.log_prob - got[i].log_prob) < tolerance;
    });
    REQUIRE(same != all.end());
    CHECK(got[i].log_prob == Approx(same->log_prob).margin(tolerance));
    CHECK(got[i].score == Approx(same->score).margin(tolerance));
    for (std::size_t j = 0; j < i && distinct; ++j) {
      CHECK_FALSE((got[j].tokens == got[i].tokens && got[j].finished == got[i].finished));
    }
  }
}

bool contains(const std::vector<std::int64_t>& v, std::int64_t x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

TEST_CASE("beam search equals exhaustive search when the beam holds every sequence", "[search]") {
  constexpr std::int64_t kVocab = 4;
  constexpr int kSteps = 4;  // |V|^T = 256
  const auto markov = random_markov(/*images=*/3, kVocab, /*seed=*/7);
  const auto lstm = SeedDecoder(kVocab, 6, 8, /*seed=*/3, /*memory=*/true);
  const auto lstm_features = random_features(3, 6, 11);

  for (double alpha : {0.0, 0.7}) {
    for (int num_return : {3, 256}) {
      Opts o = ids(/*end=*/0);
      o.beam_size = 256;
      o.max_length = kSteps;
      o.alpha = alpha;
      o.num_return = num_return;
      INFO("alpha " << alpha << ", num_return " << num_return);
      const auto got = run_beam(markov, table_ids(3), o);
      const auto got_lstm = run_beam(lstm, lstm_features, o);
      REQUIRE(got.size() == 3);
      REQUIRE(got_lstm.size() == 3);
      for (std::int64_t i = 0; i < 3; ++i) {
        INFO("image " << i);
        auto want = exhaustive(markov, table_ids(3), i, o);
        // Sequences: ending after 0..3 words (1 + 3 + 9 + 27) or cut at 4 words (81).
        REQUIRE(want.size() == 121);
        require_best_of(got[i], want, num_return);
        require_best_of(got_lstm[i], exhaustive(lstm, lstm_features, i, o), num_return);
      }
    }
  }
}

TEST_CASE("beam search equals exhaustive search over the attention decoder",
          "[search][attention]") {
  torch::manual_seed(9);
  imcap::AttentionDecoderOptions a;
  a.vocab_size = 4;
  a.encoder_dim = 6;
  a.embed_size = 5;
  a.hidden_size = 8;
  a.attention_dim = 4;
  a.start_id = 3;
  imcap::AttentionDecoder decoder(a);
  decoder->eval();
  const imcap::AttentionStepper steps(decoder);
  const torch::Tensor grid = torch::randn({2, 5, 6});
  for (double alpha : {0.0, 0.7}) {
    INFO("alpha " << alpha);
    Opts o = ids(/*end=*/0, /*unk=*/-1, /*start=*/3);
    o.beam_size = 256;
    o.max_length = 4;
    o.alpha = alpha;
    o.num_return = 256;
    const auto got = run_beam(steps, grid, o);
    REQUIRE(got.size() == 2);
    for (std::int64_t i = 0; i < 2; ++i) {
      INFO("image " << i);
      require_best_of(got[i], exhaustive(steps, grid, i, o), 256, /*distinct=*/false);
    }
  }
}

TEST_CASE("beam search equals exhaustive search with masks and a stripped <start>", "[search]") {
  // Tokens: 0 <end>, 1 <start>, 2 <unk>, 3 and 4 words. <start> is the likely first token and
  // <unk> a likely word, as in a seed-style model.
  constexpr std::int64_t kVocab = 5;
  auto init = torch::log_softmax(
      torch::tensor({{0.0f, 4.0f, 1.0f, 0.5f, 0.2f}, {0.1f, 3.0f, 0.0f, 1.5f, 0.7f}}), -1);
  auto trans =
      torch::log_softmax(torch::randn({2, kVocab, kVocab}, at::detail::createCPUGenerator(5)) +
                             torch::tensor({0.0f, -2.0f, 1.5f, 0.0f, 0.0f}),
                         -1);
  const MarkovDecoder markov(init, trans);
  Opts o = ids(/*end=*/0, /*unk=*/2, /*start=*/1);
  o.beam_size = 625;
  o.max_length = 4;
  o.num_return = 625;
  o.forbid_unk = true;
  o.min_length = 1;
  o.alpha = 0.5;
  const auto got = run_beam(markov, table_ids(2), o);
  for (std::int64_t i = 0; i < 2; ++i) {
    const auto want = exhaustive(markov, table_ids(2), i, o);
    // [<start> 3 3 <end>] and [3 3 <end>] both give "3 3": not distinct.
    require_best_of(got[i], want, want.size(), /*distinct=*/false);
    for (const auto& h : got[i]) {
      CHECK_FALSE(contains(h.tokens, 2));
      CHECK((h.tokens.empty() || h.tokens[0] != 1));
    }
  }
  // The best caption of image 0 was generated after a <start>, whose log-probability counts.
  const auto& best = got[0][0];
  REQUIRE(best.finished);
  double lp = init[0][1].item<double>();
  std::int64_t previous = 1;
  for (auto t : best.tokens) {
    lp += trans[0][previous][t].item<double>();
    previous = t;
  }
  lp += trans[0][previous][0].item<double>();
  CHECK(best.log_prob == Approx(lp).margin(1e-5));
}

TEST_CASE("beam search never returns fewer hypotheses than requested", "[search]") {
  SECTION("random LSTM, several beam sizes") {
    const SeedDecoder lstm(/*vocab=*/30, 8, 16, /*seed=*/1, /*memory=*/false, {{0, 2.0f}});
    const auto features = random_features(6, 8, 2);
    for (int beam : {2, 3, 5, 8}) {
      for (int num_return = 1; num_return <= beam; ++num_return) {
        Opts o = ids(0);
        o.beam_size = beam;
        o.num_return = num_return;
        o.max_length = 6;
        const auto results = run_beam(lstm, features, o);
        REQUIRE(results.size() == 6);
        for (const auto& r : results) {
          REQUIRE(r.size() == static_cast<std::size_t>(num_return));
          for (std::size_t k = 1; k < r.size(); ++k) {
            // finished ones first, each group best first
            CHECK((r[k - 1].finished > r[k].finished ||
                   (r[k - 1].finished == r[k].finished && r[k - 1].score >= r[k].score)));
          }
        }
      }
    }
  }
  SECTION("<end> so likely that every beam wants to stop at once") {
    // From every token, <end> has probability 0.97: all beams finish at the first chance.
    std::vector<std::vector<double>> init{{0.97, 0.012, 0.01, 0.008}};
    std::vector<std::vector<double>> trans(4, init[0]);
    const MarkovDecoder markov(log_probs_from(init), log_probs_from(trans).unsqueeze(0));
    Opts o = ids(0);
    o.beam_size = 4;
    o.num_return = 4;
    o.max_length = 5;
    const auto r = run_beam(markov, table_ids(1), o)[0];
    REQUIRE(r.size() == 4);
    require_best_of(r, exhaustive(markov, table_ids(1), 0, o), 4);
  }
  SECTION("no <end> at all: every hypothesis is cut at max_length") {
    const auto markov = random_markov(2, 5, 9);
    Opts o;  // end_id -1
    o.beam_size = 3;
    o.num_return = 3;
    o.max_length = 4;
    const auto results = run_beam(markov, table_ids(2), o);
    for (std::int64_t i = 0; i < 2; ++i) {
      REQUIRE(results[i].size() == 3);
      for (const auto& h : results[i]) {
        CHECK_FALSE(h.finished);
        CHECK(h.tokens.size() == 4);
      }
    }
  }
  SECTION("fewer only when fewer sequences exist") {
    // Tokens 0 <end>, 1 <unk>, 2 word; unk forbidden, max_length 2: "", "2", "2 2" (cut).
    const auto markov = random_markov(1, 3, 4);
    Opts o = ids(0, 1);
    o.forbid_unk = true;
    o.beam_size = 5;
    o.num_return = 5;
    o.max_length = 2;
    const auto r = run_beam(markov, table_ids(1), o)[0];
    REQUIRE(r.size() == 3);
    require_best_of(r, exhaustive(markov, table_ids(1), 0, o), 5);
  }
}

TEST_CASE("beam search keeps the best partial captions, not the worst (im2txt regression)",
          "[search]") {
  // im2txt's beam search once kept the wrong end of its sorted candidates. Here the best
  // caption needs the best first word: token 1 (0.40) leads to "1 4 <end>" (p = 0.40 * 0.9 *
  // 0.9); tokens 2 (0.35) and 3 (0.25) lead only to poorer captions. With 2 beams, keeping
  // the two worst first words {2, 3} loses it, and so does keeping the worst at step 2.
  //            <end>  1     2     3     4     5
  std::vector<std::vector<double>> init{{0.00, 0.40, 0.35, 0.25, 0.00, 0.00}};
  std::vector<std::vector<double>> trans{
      {1.00, 0.00, 0.00, 0.00, 0.00, 0.00},  // after <end> (never used)
      {0.05, 0.00, 0.00, 0.00, 0.90, 0.05},  // after 1
      {0.20, 0.00, 0.00, 0.00, 0.00, 0.80},  // after 2
      {0.30, 0.00, 0.00, 0.00, 0.00, 0.70},  // after 3
      {0.90, 0.00, 0.00, 0.00, 0.00, 0.10},  // after 4
      {0.30, 0.00, 0.00, 0.00, 0.00, 0.70},  // after 5
  };
  const MarkovDecoder markov(log_probs_from(init), log_probs_from(trans).unsqueeze(0));
  Opts o = ids(0);
  o.beam_size = 2;
  o.num_return = 2;
  o.max_length = 3;
  const auto r = run_beam(markov, table_ids(1), o)[0];
  REQUIRE(r.size() == 2);
  CHECK(r[0].tokens == std::vector<std::int64_t>{1, 4});
  CHECK(r[0].finished);
  CHECK(r[0].log_prob == Approx(std::log(0.40 * 0.9 * 0.9)));
  require_best_of({r[0]}, exhaustive(markov, table_ids(1), 0, o), 1);
  // The beams after step 2 are "1 4" (0.36) and "2 5" (0.28). "2 <end>" (0.07) ranked third,
  // outside the 2 beams, and so did "2 5 <end>" at step 3: the runner-up is "2 5 5", cut.
  CHECK(r[1].tokens == std::vector<std::int64_t>{2, 5, 5});
  CHECK_FALSE(r[1].finished);
  CHECK(r[1].log_prob == Approx(std::log(0.35 * 0.8 * 0.7)));
}

TEST_CASE("greedy search equals beam search with one beam", "[search]") {
  const SeedDecoder lstm(/*vocab=*/40, 8, 16, /*seed=*/21, /*memory=*/true, {{0, 1.5f}, {3, 1.0f}});
  const auto features = random_features(8, 8, 22);
  for (bool forbid : {false, true}) {
    for (int min_length : {0, 3}) {
      Opts o = ids(0, 3);
      o.forbid_unk = forbid;
      o.min_length = min_length;
      o.max_length = 12;
      const auto greedy = run_greedy(lstm, features, o);
      const auto beam = run_beam(lstm, features, o);
      const auto dispatched = run_search(lstm, features, o);
      REQUIRE(greedy.size() == 8);
      for (std::size_t i = 0; i < greedy.size(); ++i) {
        INFO("image " << i << " forbid " << forbid << " min_length " << min_length);
        require_same({greedy[i]}, beam[i]);
        require_same({greedy[i]}, dispatched[i], 0.0);
      }
    }
  }
}

TEST_CASE("batched search equals one image at a time", "[search]") {
  // With <end> likely enough, images finish at different steps and rows get dropped mid-search.
  const auto features = random_features(7, 8, 32) * 3;
  std::vector<std::size_t> lengths;
  for (float end_bias : {0.5f, 1.0f, 1.5f, 2.0f}) {
    const SeedDecoder lstm(/*vocab=*/25, 8, 16, /*seed=*/31, /*memory=*/true, {{0, end_bias}});
    for (int beam : {1, 3}) {
      Opts o = ids(0);
      o.beam_size = beam;
      o.num_return = beam;
      o.max_length = 10;
      const auto batched = run_search(lstm, features, o);
      REQUIRE(batched.size() == 7);
      for (std::int64_t i = 0; i < 7; ++i) {
        INFO("end bias " << end_bias << " beam " << beam << " image " << i);
        const auto alone = run_search(lstm, features.narrow(0, i, 1), o);
        REQUIRE(alone.size() == 1);
        require_same(batched[i], alone[0]);
        lengths.push_back(batched[i][0].tokens.size());
      }
    }
  }
  const auto markov = random_markov(8, 6, 33);
  for (int beam : {1, 4}) {
    Opts o = ids(0);
    o.beam_size = beam;
    o.num_return = std::min(beam, 2);
    o.max_length = 8;
    const auto batched = run_search(markov, table_ids(8), o);
    for (std::int64_t i = 0; i < 8; ++i) {
      require_same(batched[i], run_search(markov, table_ids(8).narrow(0, i, 1), o)[0], 0);
      lengths.push_back(batched[i][0].tokens.size());
    }
  }
  // The case is only meaningful if captions have different lengths.
  std::sort(lengths.begin(), lengths.end());
  CHECK(std::unique(lengths.begin(), lengths.end()) - lengths.begin() >= 3);
}

TEST_CASE("forbid_unk never emits <unk>", "[search]") {
  // <unk> (id 3) gets a large bias: it is the most likely token almost everywhere.
  const SeedDecoder lstm(/*vocab=*/20, 8, 16, /*seed=*/41, /*memory=*/false, {{3, 4.0f}});
  const auto features = random_features(5, 8, 42);
  for (int beam : {1, 4}) {
    Opts o = ids(0, 3);
    o.beam_size = beam;
    o.num_return = beam;
    o.max_length = 8;
    bool seen_unk = false;
    for (const auto& r : run_search(lstm, features, o)) {
      for (const auto& h : r) seen_unk = seen_unk || contains(h.tokens, 3);
    }
    CHECK(seen_unk);  // without the option it does appear
    o.forbid_unk = true;
    for (const auto& r : run_search(lstm, features, o)) {
      REQUIRE(r.size() == static_cast<std::size_t>(beam));
      for (const auto& h : r) CHECK_FALSE(contains(h.tokens, 3));
    }
  }
  const auto ids_plain = imcap::greedy_ids(lstm, features, 8);
  CHECK((ids_plain == 3).any().item<bool>());  // greedy_ids masks nothing, like sample()
}

TEST_CASE("length normalisation changes which caption wins", "[search]") {
  // "<end>" at once: p = 0.4, log p = -0.92, length 1.
  // "1 2 <end>": p = 0.35 * 0.95 * 0.95, log p = -1.15, length 3: -0.38 with alpha = 1.
  //            <end>  1     2     3     4
  std::vector<std::vector<double>> init{{0.40, 0.35, 0.10, 0.10, 0.05}};
  std::vector<std::vector<double>> trans{{0.20, 0.20, 0.20, 0.20, 0.20},
                                         {0.01, 0.01, 0.95, 0.02, 0.01},
                                         {0.95, 0.01, 0.01, 0.02, 0.01},
                                         {0.20, 0.20, 0.20, 0.20, 0.20},
                                         {0.20, 0.20, 0.20, 0.20, 0.20}};
  const MarkovDecoder markov(log_probs_from(init), log_probs_from(trans).unsqueeze(0));
  Opts o = ids(0);
  o.beam_size = 2;
  o.max_length = 5;
  auto best = run_beam(markov, table_ids(1), o)[0][0];
  CHECK(best.tokens.empty());
  CHECK(best.score == Approx(std::log(0.4)));
  o.alpha = 1.0;
  best = run_beam(markov, table_ids(1), o)[0][0];
  CHECK(best.tokens == std::vector<std::int64_t>{1, 2});
  CHECK(best.log_prob == Approx(std::log(0.35 * 0.95 * 0.95)));
  CHECK(best.score == Approx(std::log(0.35 * 0.95 * 0.95) / 3));
  require_best_of({best}, exhaustive(markov, table_ids(1), 0, o), 1);
}

TEST_CASE("searches respect max_length and min_length", "[search]") {
  const SeedDecoder lstm(/*vocab=*/15, 8, 16, /*seed=*/51, /*memory=*/false, {{0, 1.0f}});
  const auto features = random_features(6, 8, 52);
  for (int max_length : {1, 2, 5, 9}) {
    for (int beam : {1, 3}) {
      Opts o = ids(0);
      o.beam_size = beam;
      o.max_length = max_length;
      for (const auto& r : run_search(lstm, features, o)) {
        for (const auto& h : r) {
          CHECK(static_cast<int>(h.tokens.size()) + (h.finished ? 1 : 0) <= max_length);
          CHECK_FALSE(contains(h.tokens, 0));
        }
      }
      Opts no_end;
      no_end.beam_size = beam;
      no_end.max_length = max_length;
      for (const auto& r : run_search(lstm, features, no_end)) {
        CHECK(static_cast<int>(r[0].tokens.size()) == max_length);
      }
      o.min_length = 3;
      for (const auto& r : run_search(lstm, features, o)) {
        for (const auto& h : r) {
          if (h.finished) CHECK(h.tokens.size() >= 3);
          if (max_length > 3) CHECK(h.tokens.size() >= 3);
        }
      }
    }
  }
  auto sampled = imcap::greedy_ids(lstm, features, 7);
  CHECK(sampled.sizes() == torch::IntArrayRef{6, 7});
  CHECK_NOTHROW(sampled.add_(1));  // an ordinary tensor, not an inference-mode one
}

TEST_CASE("searches are deterministic and safe to run from several threads", "[search]") {
  const SeedDecoder lstm(/*vocab=*/50, 16, 32, /*seed=*/61, /*memory=*/true, {{0, 1.0f}});
  const auto features = random_features(4, 16, 62);
  Opts o = ids(0, 3);
  o.beam_size = 4;
  o.num_return = 3;
  o.max_length = 12;
  const auto reference = run_search(lstm, features, o);
  for (std::int64_t i = 0; i < 4; ++i)
    require_same(run_search(lstm, features, o)[i], reference[i], 0);

  std::vector<std::vector<std::vector<Hypothesis>>> results(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < results.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep) results[t] = run_search(lstm, features, o);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    for (std::int64_t i = 0; i < 4; ++i) require_same(r[i], reference[i], 0);
  }
}

TEST_CASE("search options and decoder outputs are validated", "[search]") {
  const auto markov = random_markov(1, 5, 71);
  const auto features = table_ids(1);
  auto bad = [&](auto edit) {
    Opts o = ids(0, 3);
    o.beam_size = 2;
    edit(o);
    return o;
  };
  using imcap::InvalidArgument;
  CHECK_THROWS_AS(run_search(markov, features, bad([](auto& o) { o.beam_size = 0; })),
                  InvalidArgument);
  CHECK_THROWS_AS(run_search(markov, features, bad([](auto& o) { o.max_length = 0; })),
                  InvalidArgument);
  CHECK_THROWS_AS(run_search(markov, features, bad([](auto& o) { o.num_return = 3; })),
                  InvalidArgument);
  CHECK_THROWS_AS(run_search(markov, features, bad([](auto& o) { o.alpha = -1; })),
                  InvalidArgument);
  CHECK_THROWS_AS(run_search(markov, features, bad([](auto& o) { o.end_id = 5; })),
                  InvalidArgument);
  CHECK_THROWS_WITH(run_search(markov, features, bad([](auto& o) { o.unk_id = 9; })),
                    Catch::Contains("SpecialTokens::unk = 9") && Catch::Contains("[0, 5)"));
  // With no <unk> in the vocabulary, forbid_unk has nothing to forbid.
  const auto without_unk = run_search(markov, features, bad([](auto& o) {
                                        o.unk_id = -1;
                                        o.forbid_unk = true;
                                      }));
  const auto allowed = run_search(markov, features, bad([](auto& o) {
                                    o.unk_id = -1;
                                    o.forbid_unk = false;
                                  }));
  require_same(without_unk[0], allowed[0], 0);
  CHECK_THROWS_AS(imcap::greedy_ids(markov, features, 0), InvalidArgument);
  CHECK(run_search(markov, torch::zeros({0}, torch::kInt64), bad([](auto&) {})).empty());

  class BadShape : public StepDecoder {
   public:
    StepStart start(const torch::Tensor& f) const override {
      StepStart s;
      s.scores = torch::zeros({f.size(0), 4});
      s.state.add(torch::zeros({1, f.size(0), 3}), 1);
      return s;
    }
    torch::Tensor step(const torch::Tensor& tokens, DecodeState&) const override {
      return torch::zeros({tokens.size(0), 5});  // vocabulary changed
    }
  };
  Opts o = ids(-1);
  o.beam_size = 2;
  CHECK_THROWS_WITH(run_search(BadShape{}, torch::zeros({2, 3}), o),
                    Catch::Contains("[4, 5]") && Catch::Contains("expected [4, 4]"));
  CHECK_THROWS_AS(run_greedy(BadShape{}, torch::zeros({2, 3}), o), InvalidArgument);

  DecodeState state;
  state.add(torch::zeros({2, 3}), 2);
  CHECK_THROWS_AS(state.num_rows(), InvalidArgument);
  state.row_dims[0] = 1;
  state.select_rows(torch::tensor({2, 2, 0}, torch::kInt64));
  CHECK(state.tensors[0].sizes() == torch::IntArrayRef{2, 3});
  CHECK(state.num_rows() == 3);
}

TEST_CASE("searches on CUDA give the CPU's results", "[search][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("CUDA is not available: nothing to compare");
    return;
  }
  SeedDecoder cpu(/*vocab=*/300, 16, 32, /*seed=*/91, /*memory=*/true, {{0, 1.0f}});
  SeedDecoder cuda(/*vocab=*/300, 16, 32, /*seed=*/91, /*memory=*/true, {{0, 1.0f}});
  cuda.to(torch::kCUDA);
  const auto features = random_features(6, 16, 92);
  for (int beam : {1, 4}) {
    Opts o = ids(0, 3, 1);
    o.beam_size = beam;
    o.num_return = beam;
    o.forbid_unk = true;
    o.min_length = 2;
    o.max_length = 15;
    const auto want = run_search(cpu, features, o);
    const auto got = run_search(cuda, features.to(torch::kCUDA), o);
    for (std::size_t i = 0; i < want.size(); ++i) require_same(got[i], want[i]);
  }
  const auto ids_cuda = imcap::greedy_ids(cuda, features.to(torch::kCUDA), 15);
  CHECK(ids_cuda.device().is_cpu());
  CHECK(torch::equal(ids_cuda, imcap::greedy_ids(cpu, features, 15)));
}

TEST_CASE("CudaGraphGreedy is greedy search, and runs eagerly on the CPU", "[search]") {
  bool finished = false, cut = false;  // both kinds of row are compared
  for (const auto inject : {imcap::ImageInject::kPre, imcap::ImageInject::kPar}) {
    INFO("inject " << imcap::to_string(inject));
    imcap::Decoder decoder = imcap::test::eval_decoder(/*vocab=*/400, /*embed=*/12,
                                                       /*hidden=*/24, /*seed=*/93, inject);
    const imcap::DecoderStepper stepper(decoder);
    // The masks, <start> stripping, <end> and a length penalty, as the Captioner uses them;
    // token 0 is made likely first (a seed-style <start>), token 5 (<end>) a little likely, then
    // likely (rows that run to max_length, then rows that stop early).
    {
      torch::NoGradGuard no_grad;
      decoder->linear->bias[0].add_(3.0);
    }
    for (const double end_boost : {0.1, 2.0}) {
      {
        torch::NoGradGuard no_grad;
        decoder->linear->bias[5].add_(end_boost);
      }
      for (const int min_length : {0, 3}) {
        Opts o = ids(/*end=*/5, /*unk=*/7, /*start=*/0);
        o.forbid_unk = true;
        o.min_length = min_length;
        o.max_length = 9;
        o.alpha = 0.5;
        const imcap::detail::CudaGraphGreedy greedy(decoder, o, o.tokens());
        for (const std::int64_t batch : {1, 6}) {
          INFO("end boost " << end_boost << ", min_length " << min_length << ", batch " << batch);
          const auto features = random_features(batch, 12, 94 + static_cast<std::uint64_t>(batch));
          const auto want = run_greedy(stepper, features, o);
          const auto got = greedy(features);
          require_same(got, want, 1e-5);
          for (const auto& h : want) {
            (h.finished ? finished : cut) = true;
            CHECK(static_cast<int>(h.tokens.size()) >= (h.finished ? min_length : 0));
            CHECK_FALSE(contains(h.tokens, 7));
          }
        }
        CHECK(greedy(torch::zeros({0, 12})).empty());
        CHECK(greedy.graphs_captured() == 0);  // graphs only on a GPU
      }
    }
    // No special tokens: the notebook's sample(), max_length ids per image.
    Opts plain;
    plain.max_length = 9;
    const imcap::detail::CudaGraphGreedy sample(decoder, plain, plain.tokens());
    const auto features = random_features(4, 12, 99);
    const auto got = sample(features);
    const auto want = imcap::greedy_ids(stepper, features, 9);
    for (std::size_t b = 0; b < got.size(); ++b) {
      CHECK(torch::equal(torch::tensor(got[b].tokens, torch::kInt64),
                         want[static_cast<std::int64_t>(b)]));
    }
  }
  CHECK(finished);
  CHECK(cut);
  imcap::Decoder decoder = imcap::test::eval_decoder(400, 12, 24, 93);
  const imcap::detail::CudaGraphGreedy greedy(decoder, Opts{}, imcap::SpecialTokens{});
  CHECK_THROWS_AS(greedy(torch::zeros({2, 13})), imcap::InvalidArgument);
  CHECK_THROWS_AS(greedy(torch::zeros({12})), imcap::InvalidArgument);
  Opts zero;
  zero.max_length = 0;
  CHECK_THROWS_AS(imcap::detail::CudaGraphGreedy(decoder, zero, zero.tokens()),
                  imcap::InvalidArgument);
  CHECK_THROWS_WITH(imcap::detail::CudaGraphGreedy(decoder, Opts{}, ids(400).tokens()),
                    Catch::Contains("400") && Catch::Contains("[0, 400)"));
  CHECK_THROWS_AS(imcap::detail::CudaGraphGreedy(imcap::Decoder(nullptr), Opts{}, {}),
                  imcap::InvalidArgument);
}

TEST_CASE("CudaGraphGreedy on CUDA replays one graph per batch size", "[search][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("CUDA is not available: nothing to compare");
    return;
  }
  // A LibTorch that runs on a GPU has CUDA graphs: if the build's probe missed them, fail here.
  REQUIRE(imcap::detail::CudaGraphGreedy::available());
  imcap::Decoder decoder = imcap::test::eval_decoder(500, 16, 32, /*seed=*/95);
  const auto features = random_features(6, 16, 96);
  decoder->to(torch::kCUDA);
  const auto on_gpu = features.to(torch::kCUDA);
  Opts o = ids(/*end=*/2, /*unk=*/3, /*start=*/1);
  o.forbid_unk = true;
  o.min_length = 2;
  o.max_length = 12;
  // The graph replays the eager step kernels on every row; the step-by-step search drops the
  // rows that ended, so its log-probabilities may differ in the last bits.
  const imcap::DecoderStepper stepper(decoder);
  const auto want = run_greedy(stepper, on_gpu, o);
  const imcap::detail::CudaGraphGreedy greedy(decoder, o, o.tokens());
  require_same(greedy(on_gpu), want, 1e-4);  // captured
  require_same(greedy(on_gpu), want, 1e-4);  // replayed
  CHECK(greedy.graphs_captured() == 1);
  const auto two = on_gpu.slice(0, 0, 2);
  require_same(greedy(two), run_greedy(stepper, two, o), 1e-4);
  CHECK(greedy.graphs_captured() == 2);
  // In-place weight changes are read by the replay, as the eager loop reads them.
  {
    torch::NoGradGuard no_grad;
    decoder->linear->bias.add_(torch::randn_like(decoder->linear->bias));
  }
  require_same(greedy(on_gpu), run_greedy(stepper, on_gpu, o), 1e-4);
  CHECK(greedy.graphs_captured() == 2);
  CHECK(greedy.capture_error().empty());
  // The other image injections and a deeper LSTM capture as well.
  for (const auto inject : {imcap::ImageInject::kPar, imcap::ImageInject::kInit}) {
    for (const int64_t layers : {1, 2}) {
      INFO("inject " << imcap::to_string(inject) << ", layers " << layers);
      imcap::DecoderOptions d_options;
      d_options.vocab_size = 300;
      d_options.embed_size = 16;
      d_options.hidden_size = 24;
      d_options.num_layers = layers;
      d_options.image_inject = inject;
      torch::manual_seed(97);
      imcap::Decoder d(d_options);
      d->eval();
      d->to(torch::kCUDA);
      const auto eager = run_greedy(imcap::DecoderStepper(d), on_gpu, o);
      const imcap::detail::CudaGraphGreedy g(d, o, o.tokens());
      require_same(g(on_gpu), eager, 1e-4);
      require_same(g(on_gpu), eager, 1e-4);
      CHECK(g.graphs_captured() == 1);
      CHECK(g.capture_error().empty());
    }
  }
}

TEST_CASE("greedy_ids gives the notebook's sample() ids", "[search][python]") {
  constexpr std::int64_t kVocab = 60;
  const SeedDecoder lstm(kVocab, 12, 24, /*seed=*/81);
  const auto features = random_features(5, 12, 82);
  constexpr int kMaxLength = 20;
  const auto sampled = imcap::greedy_ids(lstm, features, kMaxLength);
  REQUIRE(sampled.sizes() == torch::IntArrayRef{5, kMaxLength});

  c10::Dict<std::string, torch::Tensor> blob;
  for (const auto& p : lstm.net()->named_parameters()) blob.insert(p.key(), p.value().detach());
  blob.insert("features", features);
  imcap::test::TempDir dir;
  const auto bytes = torch::pickle_save(c10::IValue(blob));
  imcap::test::write_text(dir.file("weights.pt"), std::string(bytes.begin(), bytes.end()));
  const auto py = imcap::test::run_python("search_sample.py",
                                          {dir.file("weights.pt"), std::to_string(kMaxLength)});
  INFO(py.err);
  REQUIRE(py.exit_code == 0);
  const auto want = nlohmann::json::parse(py.out);
  REQUIRE(want.size() == 5);
  for (std::int64_t i = 0; i < 5; ++i) {
    for (std::int64_t t = 0; t < kMaxLength; ++t) {
      INFO("image " << i << " step " << t);
      CHECK(sampled[i][t].item<std::int64_t>() == want[i][t].get<std::int64_t>());
    }
  }
  // greedy_search is the same walk, cut at the first <end>.
  Opts o = ids(/*end=*/sampled[0][3].item<std::int64_t>());
  o.max_length = kMaxLength;
  const auto greedy = run_greedy(lstm, features, o);
  for (std::int64_t i = 0; i < 5; ++i) {
    std::vector<std::int64_t> row(sampled[i].data_ptr<std::int64_t>(),
                                  sampled[i].data_ptr<std::int64_t>() + kMaxLength);
    const auto end = std::find(row.begin(), row.end(), o.end_id);
    CHECK(greedy[i].finished == (end != row.end()));
    CHECK(greedy[i].tokens == std::vector<std::int64_t>(row.begin(), end));
  }
}

namespace {

// The benchmark's decoder: the seed's architecture on LSTMCell, as plain tensors.
class CellDecoder : public StepDecoder {
 public:
  CellDecoder(std::int64_t vocab, std::int64_t embed, std::int64_t hidden) {
    auto gen = at::detail::createCPUGenerator(0);
    const double k = 1.0 / std::sqrt(static_cast<double>(hidden));
    embed_ = torch::randn({vocab, embed}, gen);
    w_ih_ = torch::rand({4 * hidden, embed}, gen) * 2 * k - k;
    w_hh_ = torch::rand({4 * hidden, hidden}, gen) * 2 * k - k;
    b_ih_ = torch::rand({4 * hidden}, gen) * 2 * k - k;
    b_hh_ = torch::rand({4 * hidden}, gen) * 2 * k - k;
    w_out_ = torch::rand({vocab, hidden}, gen) * 2 * k - k;
    b_out_ = torch::rand({vocab}, gen) * 2 * k - k;
  }
  StepStart start(const torch::Tensor& features) const override {
    const auto zeros = torch::zeros({features.size(0), w_hh_.size(1)});
    auto [h, c] = at::lstm_cell(features, {zeros, zeros}, w_ih_, w_hh_, b_ih_, b_hh_);
    StepStart s;
    s.scores = at::linear(h, w_out_, b_out_);
    s.state.add(h, 0);
    s.state.add(c, 0);
    return s;
  }
  torch::Tensor step(const torch::Tensor& tokens, DecodeState& state) const override {
    auto [h, c] = at::lstm_cell(embed_.index_select(0, tokens),
                                {state.tensors[0], state.tensors[1]}, w_ih_, w_hh_, b_ih_, b_hh_);
    auto scores = at::linear(h, w_out_, b_out_);
    state.tensors[0] = std::move(h);
    state.tensors[1] = std::move(c);
    return scores;
  }

 private:
  torch::Tensor embed_, w_ih_, w_hh_, b_ih_, b_hh_, w_out_, b_out_;
};

// A decoder that costs nothing: fixed scores, one state tensor. Times the search alone.
class FreeDecoder : public StepDecoder {
 public:
  explicit FreeDecoder(std::int64_t vocab)
      : scores_(torch::randn({1, vocab}, at::detail::createCPUGenerator(3))) {}
  StepStart start(const torch::Tensor& features) const override {
    StepStart s;
    s.scores = scores_.expand({features.size(0), scores_.size(1)});
    s.state.add(torch::zeros({1, features.size(0), 8}), 1);
    return s;
  }
  torch::Tensor step(const torch::Tensor& tokens, DecodeState&) const override {
    return scores_.expand({tokens.size(0), scores_.size(1)});
  }

 private:
  torch::Tensor scores_;
};

struct Timing {
  double median = 0;
  double min = 0;
};

Timing time_ms(const std::function<void()>& fn, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front()};
}

}  // namespace

// Not a test: prints timings (median and min of repeated runs, per image). Run with
//   ./build/tests/imcap_tests "[.bench]"      (hidden tag; threads from OMP_NUM_THREADS)
TEST_CASE("search benchmark: greedy decode, 20 steps, V 10k, E 256, H 512", "[.bench]") {
  constexpr std::int64_t kVocab = 10000;
  const CellDecoder decoder(kVocab, 256, 512);
  const FreeDecoder free_decoder(kVocab);
  const auto one = random_features(1, 256, 1);
  const auto eight = random_features(8, 256, 2);
  Opts never_ends;  // end_id -1: all 20 steps, as in the PyTorch baseline
  never_ends.max_length = 20;
  Opts beam3 = never_ends;
  beam3.beam_size = 3;
  const auto report = [](const char* what, Timing t, int per = 1) {
    std::printf("%-50s median %8.3f ms   min %8.3f ms\n", what, t.median / per, t.min / per);
  };
  std::printf("intra-op threads: %d\n", at::get_num_threads());
  report("decoder alone (start + 19 steps), batch 1", time_ms(
                                                          [&] {
                                                            torch::NoGradGuard no_grad;
                                                            auto s = decoder.start(one);
                                                            const auto t =
                                                                torch::zeros({1}, torch::kInt64);
                                                            for (int i = 1; i < 20; ++i) {
                                                              decoder.step(t, s.state);
                                                            }
                                                          },
                                                          20, 100));
  report("greedy_ids, batch 1", time_ms([&] { imcap::greedy_ids(decoder, one, 20); }, 20, 100));
  report("greedy_search, batch 1", time_ms([&] { run_greedy(decoder, one, never_ends); }, 20, 100));
  report("beam_search 3, batch 1", time_ms([&] { run_beam(decoder, one, beam3); }, 5, 30));
  report("greedy_search, batch 8, per image",
         time_ms([&] { run_greedy(decoder, eight, never_ends); }, 5, 30), 8);
  report("beam_search 3, batch 8, per image",
         time_ms([&] { run_beam(decoder, eight, beam3); }, 3, 15), 8);
  report("search overhead: greedy_search, batch 1",
         time_ms([&] { run_greedy(free_decoder, one, never_ends); }, 20, 200));
  report("search overhead: beam_search 3, batch 1",
         time_ms([&] { run_beam(free_decoder, one, beam3); }, 20, 200));
}

TEST_CASE("sample_captions draws seeded captions whose log-probabilities are the model's",
          "[search][sampling]") {
  imcap::Decoder decoder = imcap::test::eval_decoder(/*vocab=*/30, /*embed=*/8, /*hidden=*/16,
                                                     /*seed=*/101, imcap::ImageInject::kPar);
  {
    torch::NoGradGuard no_grad;
    decoder->linear->bias[2].add_(1.5);  // <end> likely enough that rows end at different steps
  }
  const imcap::DecoderStepper stepper(decoder);
  const auto features = random_features(3, 8, 102);
  imcap::SampleOptions o;
  o.samples = 4;
  o.max_length = 12;
  imcap::SpecialTokens special;
  special.end = 2;
  special.unk = 3;
  auto draw = [&](std::uint64_t seed, const imcap::SampleOptions& opts) {
    return imcap::sample_captions(stepper, features, opts, special,
                                  at::make_generator<at::CPUGeneratorImpl>(seed));
  };
  const imcap::SampledCaptions a = draw(7, o);
  const imcap::SampledCaptions b = draw(7, o);
  const imcap::SampledCaptions c = draw(8, o);
  REQUIRE(a.tokens.size(0) == 12);
  CHECK(torch::equal(a.tokens, b.tokens));
  CHECK(torch::equal(a.log_probs, b.log_probs));
  CHECK_FALSE(torch::equal(a.tokens, c.tokens));
  CHECK(a.log_probs.requires_grad());  // autograd was on
  // Each row: no <unk>, ends at its first <end> (or runs to max_length), padded with <end>; its
  // log-probability is the sum of the decoder's log-softmax along the row, <end> included.
  std::set<std::int64_t> lengths;
  for (std::int64_t r = 0; r < a.tokens.size(0); ++r) {
    INFO("row " << r);
    const std::int64_t n = a.lengths[r].item<std::int64_t>();
    lengths.insert(n);
    const auto row = a.tokens[r];
    for (std::int64_t t = 0; t < a.tokens.size(1); ++t) {
      const std::int64_t id = row[t].item<std::int64_t>();
      CHECK(id != 3);
      if (t >= n) CHECK(id == 2);
      if (t < n - 1) CHECK(id != 2);
    }
    if (n < o.max_length) CHECK(row[n - 1].item<std::int64_t>() == 2);
    torch::NoGradGuard no_grad;
    imcap::StepStart s = stepper.start(features.narrow(0, r / o.samples, 1));
    torch::Tensor scores = s.scores;
    double want = 0.0;
    for (std::int64_t t = 0; t < n; ++t) {
      const auto id = row.narrow(0, t, 1);
      want += torch::log_softmax(scores, 1)[0][id.item<std::int64_t>()].item<double>();
      scores = stepper.step(id, s.state);
    }
    CHECK(a.log_probs[r].item<double>() == Approx(want).margin(1e-4));
  }
  CHECK(lengths.size() > 1);
  // The log-probabilities are differentiable: their gradient reaches the decoder's weights.
  a.log_probs.sum().backward();
  CHECK(decoder->linear->weight.grad().abs().sum().item<double>() > 0.0);
  // top_k 1 is greedy search, whatever the temperature.
  imcap::SampleOptions top1 = o;
  top1.top_k = 1;
  top1.temperature = 3.0;
  imcap::SearchOptions greedy;
  greedy.beam_size = 1;
  greedy.max_length = o.max_length;
  const auto best = imcap::greedy_search(stepper, features, greedy, special);
  const imcap::SampledCaptions g = draw(9, top1);
  for (std::int64_t r = 0; r < g.tokens.size(0); ++r) {
    const auto& h = best[static_cast<std::size_t>(r / o.samples)];
    std::vector<std::int64_t> row(
        g.tokens[r].data_ptr<std::int64_t>(),
        g.tokens[r].data_ptr<std::int64_t>() + g.lengths[r].item<int64_t>());
    if (h.finished) row.pop_back();  // greedy_search leaves out the <end>
    CHECK(row == h.tokens);
    CHECK(g.log_probs[r].item<double>() == Approx(h.log_prob).margin(1e-4));
  }
  // Bad options.
  for (auto edit : std::vector<std::function<void(imcap::SampleOptions&)>>{
           [](auto& x) { x.samples = 0; }, [](auto& x) { x.max_length = 0; },
           [](auto& x) { x.temperature = 0; }, [](auto& x) { x.top_k = -1; }}) {
    imcap::SampleOptions bad = o;
    edit(bad);
    CHECK_THROWS_AS(draw(1, bad), imcap::InvalidArgument);
  }
}

TEST_CASE("sample_captions leaves out a drawn leading <start> and never draws it later",
          "[search][sampling]") {
  imcap::Decoder decoder = imcap::test::eval_decoder(30, 8, 16, /*seed=*/103);
  {
    torch::NoGradGuard no_grad;
    decoder->linear->bias[1].add_(6.0);  // <start> first, as a seed-style model predicts
  }
  imcap::SpecialTokens special;
  special.start = 1;
  special.end = 2;
  imcap::SampleOptions o;
  o.samples = 3;
  o.max_length = 6;
  torch::NoGradGuard no_grad;
  const auto s = imcap::sample_captions(imcap::DecoderStepper(decoder), random_features(2, 8, 104),
                                        o, special, at::make_generator<at::CPUGeneratorImpl>(5));
  CHECK_FALSE(s.log_probs.requires_grad());
  CHECK(s.tokens.size(1) <= 5);  // the <start> of step 0 is not a token
  CHECK_FALSE((s.tokens == 1).any().item<bool>());
  CHECK((s.lengths <= 5).all().item<bool>());
}
