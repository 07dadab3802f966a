// Self-critical sequence training: the reward against imcap eval, the loss's gradient sign,
// determinism and resume, and the CLI.
#include "catch.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "imcap/error.hpp"
#include "imcap/metrics.hpp"
#include "imcap/search.hpp"
#include "imcap/trainer.hpp"
#include "support.hpp"
#include "tiny.hpp"
#include "trainer/reward.hpp"
#include "trainer/scst.hpp"

namespace {

using imcap::test::Tiny;

// Every training image's references, and a candidate per image: a reference of the next image
// (so that rewards differ and some n-grams match), as ids and as text.
struct Candidates {
  std::map<std::int64_t, std::vector<std::string>> refs;
  std::map<std::int64_t, std::vector<std::int64_t>> ids;
  std::map<std::int64_t, std::string> text;
};

Candidates candidates_of(const imcap::CocoDataset& train) {
  Candidates c;
  const auto& images = train.image_ids();
  for (std::size_t i = 0; i < images.size(); ++i) {
    c.refs[images[i]] = train.references(images[i]);
    const auto other = images[(i + 1) % images.size()];
    auto ids = train.caption_ids(train.captions_of_image(other).front());
    ids.erase(ids.begin());                      // <start>
    if (i % 3 == 0) ids.resize(ids.size() / 2);  // some cut short, without an <end>
    c.ids[images[i]] = ids;
    c.text[images[i]] = train.vocabulary().decode(ids);
  }
  return c;
}

// The trained-for-a-moment model SCST starts from, in OUT/xe.
imcap::CaptionModel cross_entropy_model(const Tiny& t, imcap::CocoDataset& train) {
  auto model = t.model();
  auto o = t.options("xe");
  o.validate_at_stop = false;
  imcap::Trainer(model, train, nullptr, o).fit();
  return model;
}

imcap::TrainerOptions scst_options(const Tiny& t, const std::string& out) {
  auto o = t.options(out);
  o.objective = imcap::Objective::kScst;
  o.lr = 1e-3;
  o.scst.samples = 3;
  o.scst.max_length = 8;
  o.log_interval = 1;
  return o;
}

// The last step line of OUT/log.jsonl.
nlohmann::json last_step_line(const std::string& out_dir) {
  std::ifstream log(out_dir + "/log.jsonl");
  std::string text;
  nlohmann::json step;
  while (std::getline(log, text))
    if (const auto j = nlohmann::json::parse(text); j["type"] == "step") step = j;
  return step;
}

// The largest difference between two models' decoder weights.
double max_weight_difference(const imcap::CaptionModel& a, const imcap::CaptionModel& b) {
  const auto pa = a.decoder_module().named_parameters();
  const auto pb = b.decoder_module().named_parameters();
  double out = 0.0;
  for (const auto& item : pa)
    out = std::max(out, (item.value() - pb[item.key()]).abs().max().item<double>());
  return out;
}

// A cross-entropy model saved as OUT/start.imcap: the one state that SCST runs start from.
std::string saved_start(const Tiny& t, imcap::CocoDataset& train) {
  const auto start = t.tmp.file("start.imcap");
  cross_entropy_model(t, train).save(start);
  return start;
}

// One step from `start` with scst_options (so the same seed and samples), changed by `change`:
// its loss, the log's step line, the weights after it.
struct OneStep {
  double loss;
  nlohmann::json line;
  imcap::CaptionModel model;
};

template <typename Change>
OneStep one_step(const Tiny& t, imcap::CocoDataset& train, const std::string& start,
                 const std::string& name, Change change) {
  auto model = imcap::CaptionModel::load(start);
  auto o = scst_options(t, name);
  o.max_steps = 1;
  o.validate_at_stop = false;
  change(o);
  const auto r = imcap::Trainer(model, train, nullptr, o).fit();
  REQUIRE(r.losses.size() == 1);
  auto line = last_step_line(t.tmp.file(name));
  REQUIRE(!line.is_null());
  return OneStep{r.losses[0], std::move(line), std::move(model)};
}

}  // namespace

TEST_CASE("the SCST reward is imcap eval's per-image CIDEr-D and sentence BLEU-4", "[scst]") {
  Tiny t;
  const auto model = t.model();
  const auto train = t.split(true, model);
  const Candidates c = candidates_of(train);
  const auto scores = imcap::evaluate_captions(c.refs, c.text);
  REQUIRE(scores.per_image.size() == c.refs.size());
  imcap::ScstOptions cider_only;
  cider_only.reward_end = false;
  imcap::ScstOptions bleu_only = cider_only;
  bleu_only.cider_weight = 0.0;
  bleu_only.bleu_weight = 1.0;
  const imcap::detail::ScstReward cider(train, cider_only), bleu(train, bleu_only);
  double nonzero = 0.0;
  for (const auto& s : scores.per_image) {
    const auto& ids = c.ids.at(s.image_id);
    CHECK(cider.score_ids(s.image_id, ids.data(), ids.size()) ==
          Approx(s.scores.cider).margin(1e-12));
    CHECK(bleu.score_ids(s.image_id, ids.data(), ids.size()) ==
          Approx(s.scores.bleu[3]).margin(1e-12));
    nonzero += s.scores.cider > 0 ? 1 : 0;
  }
  CHECK(nonzero > 0);
  // The batched, parallel scoring of padded rows gives the same numbers.
  std::vector<std::int64_t> rows;
  std::size_t width = 0;
  for (const auto& [id, ids] : c.ids) width = std::max(width, ids.size());
  auto tokens =
      torch::full({static_cast<std::int64_t>(c.ids.size()), static_cast<std::int64_t>(width) + 1},
                  train.vocabulary().end_id(), torch::kInt64);
  std::int64_t r = 0;
  for (const auto& [id, ids] : c.ids) {
    rows.push_back(id);
    for (std::size_t i = 0; i < ids.size(); ++i) tokens[r][static_cast<std::int64_t>(i)] = ids[i];
    ++r;
  }
  const auto batched = cider.score(tokens, rows);
  for (std::size_t i = 0; i < rows.size(); ++i)
    CHECK(batched[i] == Approx(scores.per_image[i].scores.cider).margin(1e-12));
  // A weighted sum of both.
  imcap::ScstOptions both = cider_only;
  both.cider_weight = 0.5;
  both.bleu_weight = 2.0;
  const imcap::detail::ScstReward mixed(train, both);
  const auto& first = scores.per_image.front();
  const auto& ids = c.ids.at(first.image_id);
  CHECK(mixed.score_ids(first.image_id, ids.data(), ids.size()) ==
        Approx(0.5 * first.scores.cider + 2.0 * first.scores.bleu[3]).margin(1e-12));
  CHECK_THROWS_AS(cider.score_ids(-5, ids.data(), ids.size()), imcap::InvalidArgument);
}

TEST_CASE("counting <end> in the reward is scoring every caption with a closing word", "[scst]") {
  Tiny t;
  const auto model = t.model();
  const auto train = t.split(true, model);
  Candidates c = candidates_of(train);
  imcap::ScstOptions with_end;
  const imcap::detail::ScstReward reward(train, with_end);
  // The same as imcap eval when every reference and candidate ends with one more word.
  for (auto& [id, refs] : c.refs)
    for (auto& ref : refs) ref += " qqclose";
  for (auto& [id, text] : c.text) text += " qqclose";
  const auto scores = imcap::evaluate_captions(c.refs, c.text);
  for (const auto& s : scores.per_image) {
    const auto& ids = c.ids.at(s.image_id);
    CHECK(reward.score_ids(s.image_id, ids.data(), ids.size()) ==
          Approx(s.scores.cider).margin(1e-12));
  }
  // A whole reference scores more with its end than the same caption cut short.
  const auto id = train.image_ids().front();
  auto whole = train.caption_ids(train.captions_of_image(id).front());
  whole.erase(whole.begin());
  const auto cut = std::vector<std::int64_t>(whole.begin(), whole.end() - 2);
  const imcap::CiderD plain(c.refs);
  CHECK(reward.score_ids(id, whole.data(), whole.size()) >
        reward.score_ids(id, cut.data(), cut.size()));
}

TEST_CASE("an SCST step makes a sample with a positive advantage more probable", "[scst]") {
  Tiny t;
  auto model = t.model();
  const auto train = t.split(true, model);
  imcap::ScstOptions o;
  o.samples = 4;
  o.max_length = 8;
  const imcap::detail::ScstReward reward(train, o);
  std::vector<std::int64_t> ids(train.image_ids().begin(), train.image_ids().begin() + 3);
  std::mt19937_64 rng(0);
  std::vector<torch::Tensor> images;
  for (const auto id : ids) images.push_back(train.image(id, rng));
  torch::Tensor features;
  {
    torch::NoGradGuard no_grad;
    model.train(false);
    features = model.encoder()->forward(torch::stack(images));
  }
  auto gen = [] { return at::make_generator<at::CPUGeneratorImpl>(7); };
  model.train(true);
  auto s = imcap::detail::scst_loss(model, features, ids, o, reward, gen());
  REQUIRE(s.samples == 12);
  const auto best = std::max_element(s.advantages.begin(), s.advantages.end());
  const auto worst = std::min_element(s.advantages.begin(), s.advantages.end());
  REQUIRE(*best > 0);
  REQUIRE(*worst < 0);
  // The log-probabilities of the same draws (the same generator) before and after a step.
  auto log_probs = [&] {
    torch::NoGradGuard no_grad;
    imcap::SampleOptions so;
    so.samples = o.samples;
    so.max_length = o.max_length;
    const auto d = imcap::sample_captions(imcap::DecoderStepper(model.decoder()), features, so,
                                          imcap::SpecialTokens::of(model.vocab()), gen());
    CHECK(torch::equal(d.tokens, s.tokens));
    return d.log_probs.clone();
  };
  const auto before = log_probs();
  torch::optim::SGD sgd(model.decoder()->parameters(), torch::optim::SGDOptions(0.05));
  sgd.zero_grad();
  s.loss.backward();
  sgd.step();
  const auto after = log_probs();
  const auto b = static_cast<std::int64_t>(best - s.advantages.begin());
  const auto w = static_cast<std::int64_t>(worst - s.advantages.begin());
  CHECK(after[b].item<double>() > before[b].item<double>());
  CHECK(after[w].item<double>() < before[w].item<double>());
  // The loss is -(r - b) log p averaged over the samples.
  double expected = 0.0;
  for (std::size_t i = 0; i < s.advantages.size(); ++i)
    expected -= s.advantages[i] * before[static_cast<std::int64_t>(i)].item<double>();
  CHECK(s.loss.item<double>() == Approx(expected / 12).epsilon(1e-5));
}

TEST_CASE(
    "scoring the samples teacher-forced gives the loss and gradients of autograd through "
    "the sampling steps",
    "[scst]") {
  Tiny t;
  for (const auto inject :
       {imcap::ImageInject::kPre, imcap::ImageInject::kPar, imcap::ImageInject::kInit}) {
    INFO("inject " << imcap::to_string(inject));
    imcap::test::TinyConfig c;
    c.inject = inject;
    auto model = imcap::test::tiny_model(*t.vocab, 11, c);
    const auto train = t.split(true, model);
    imcap::ScstOptions o;
    o.samples = 4;
    o.max_length = 9;
    const imcap::detail::ScstReward reward(train, o);
    const std::vector<std::int64_t> ids(train.image_ids().begin(), train.image_ids().begin() + 5);
    torch::manual_seed(2);
    const auto base = torch::randn({5, 16});
    auto run = [&](bool rescore) {
      model.train(true);
      for (auto& p : model.decoder()->parameters()) p.mutable_grad() = torch::Tensor();
      const auto features = base.clone().requires_grad_(true);
      auto s = imcap::detail::scst_loss(model, features, ids, o, reward,
                                        at::make_generator<at::CPUGeneratorImpl>(9), rescore);
      s.loss.backward();
      std::vector<torch::Tensor> grads{features.grad().clone()};
      for (const auto& p : model.decoder()->parameters()) grads.push_back(p.grad().clone());
      return std::make_pair(s, grads);
    };
    const auto [fast, fast_grads] = run(true);
    const auto [slow, slow_grads] = run(false);
    CHECK(torch::equal(fast.tokens, slow.tokens));
    CHECK(fast.advantages == slow.advantages);
    CHECK(fast.loss.item<double>() == Approx(slow.loss.item<double>()).margin(1e-6));
    REQUIRE(fast_grads.size() == slow_grads.size());
    for (std::size_t i = 0; i < fast_grads.size(); ++i) {
      INFO("gradient " << i);
      CHECK(fast_grads[i].abs().max().item<double>() > 0.0);
      CHECK(torch::allclose(fast_grads[i], slow_grads[i], 1e-4, 1e-6));
    }
  }
}

TEST_CASE("SCST runs are deterministic and resume exactly, with either baseline", "[scst]") {
  Tiny t;
  auto xe_model = t.model();
  auto train = t.split(true, xe_model);
  auto val = t.split(false, xe_model);
  xe_model = cross_entropy_model(t, train);
  const auto start = t.tmp.file("start.imcap");
  xe_model.save(start);
  for (const auto baseline : {imcap::ScstBaseline::kMean, imcap::ScstBaseline::kGreedy}) {
    const std::string name = imcap::to_string(baseline);
    auto model_a = imcap::CaptionModel::load(start);
    auto o = scst_options(t, name + "-a");
    o.scst.baseline = baseline;
    const auto full = imcap::Trainer(model_a, train, &val, o).fit();
    REQUIRE(full.losses.size() >= 4);
    CHECK(std::isfinite(full.last_reward));
    CHECK(full.reward_share > 0.0);
    CHECK(full.reward_share < 1.0);
    // Same seed, same run.
    auto model_b = imcap::CaptionModel::load(start);
    const auto again = imcap::Trainer(model_b, train, &val,
                                      [&] {
                                        auto ob = o;
                                        ob.out_dir = t.tmp.file(name + "-b");
                                        return ob;
                                      }())
                           .fit();
    CHECK(again.losses == full.losses);
    // Stopped after 3 steps and resumed: the same losses.
    auto model_c = imcap::CaptionModel::load(start);
    auto oc = o;
    oc.out_dir = t.tmp.file(name + "-c");
    oc.max_steps = 3;
    const auto first = imcap::Trainer(model_c, train, &val, oc).fit();
    REQUIRE(first.losses.size() == 3);
    auto model_d = imcap::CaptionModel::load(t.tmp.file(name + "-c/last.imcap"));
    oc.max_steps = 0;
    oc.resume = true;
    const auto rest = imcap::Trainer(model_d, train, &val, oc).fit();
    auto joined = first.losses;
    joined.insert(joined.end(), rest.losses.begin(), rest.losses.end());
    CHECK(joined == full.losses);
    // The log has each step's reward.
    std::ifstream log(t.tmp.file(name + "-a/log.jsonl"));
    std::string line;
    int steps = 0;
    while (std::getline(log, line)) {
      const auto j = nlohmann::json::parse(line);
      if (j["type"] != "step") continue;
      ++steps;
      CHECK(j.contains("reward"));
      CHECK(j.contains("baseline"));
    }
    CHECK(steps > 0);
  }
  // A cross-entropy checkpoint does not resume as SCST.
  auto model_e = imcap::CaptionModel::load(t.tmp.file("xe/last.imcap"));
  auto oe = scst_options(t, "xe");
  oe.resume = true;
  CHECK_THROWS_WITH(imcap::Trainer(model_e, train, &val, oe), Catch::Contains("objective xe"));
}

TEST_CASE("SCST's cross-entropy term adds the references' loss, weighted, to the step's",
          "[scst]") {
  Tiny t;
  auto start_model = t.model();
  auto train = t.split(true, start_model);
  const auto start = saved_start(t, train);
  auto step = [&](imcap::Objective objective, double xe_weight, const std::string& name) {
    return one_step(t, train, start, name, [&](imcap::TrainerOptions& o) {
      o.objective = objective;
      o.scst.xe_weight = xe_weight;
    });
  };
  const auto scst = step(imcap::Objective::kScst, 0.0, "scst");
  const auto mixed = step(imcap::Objective::kScst, 0.5, "mixed");
  const auto xe = step(imcap::Objective::kCrossEntropy, 0.0, "xe-step");
  CHECK_FALSE(scst.line.contains("xe_loss"));
  REQUIRE(mixed.line.contains("xe_loss"));
  const double xe_loss = mixed.line["xe_loss"].get<double>();
  // The term is the cross-entropy step's loss on the same batch, and it is added, weighted.
  CHECK(xe_loss > 0.1);
  CHECK(xe_loss == Approx(xe.loss).epsilon(1e-6));
  CHECK(mixed.loss == Approx(scst.loss + 0.5 * xe_loss).epsilon(1e-6));
  CHECK(mixed.line["reward"].get<double>() == scst.line["reward"].get<double>());
  // And it is trained on: the step moves the decoder elsewhere than SCST's alone.
  CHECK(max_weight_difference(scst.model, mixed.model) > 1e-6);
}

TEST_CASE("relative advantages divide SCST's term by the mean reward, whatever its scale",
          "[scst]") {
  Tiny t;
  auto start_model = t.model();
  auto train = t.split(true, start_model);
  const auto start = saved_start(t, train);
  struct Step {
    double loss, reward, xe_loss;
    imcap::CaptionModel model;
  };
  // One step from the same state (so the same samples), the reward scaled by `cider_weight`.
  auto step = [&](bool relative, double cider_weight, double xe_weight, const std::string& name) {
    auto s = one_step(t, train, start, name, [&](imcap::TrainerOptions& o) {
      o.scst.relative_advantage = relative;
      o.scst.cider_weight = cider_weight;
      o.scst.xe_weight = xe_weight;
    });
    return Step{s.loss, s.line["reward"].get<double>(),
                s.line.contains("xe_loss") ? s.line["xe_loss"].get<double>() : 0.0,
                std::move(s.model)};
  };
  CHECK(imcap::ScstOptions{}.relative_advantage);
  const auto raw = step(false, 1.0, 0.0, "raw");
  const auto relative = step(true, 1.0, 0.0, "relative");
  REQUIRE(raw.reward > 0.05);
  REQUIRE(std::abs(raw.loss) > 1e-4);
  CHECK(relative.reward == raw.reward);
  CHECK(relative.loss == Approx(raw.loss / raw.reward).epsilon(1e-5));
  // Beside the references' cross-entropy, SCST's term is the relative one.
  const auto mixed = step(true, 1.0, 0.5, "mixed");
  REQUIRE(mixed.xe_loss > 0.1);
  CHECK(mixed.loss == Approx(raw.loss / raw.reward + 0.5 * mixed.xe_loss).epsilon(1e-5));
  // A reward three times as large: the same loss and the same step, where raw advantages pull
  // three times as hard against the cross-entropy and move the model elsewhere.
  const auto tripled = step(true, 3.0, 0.5, "tripled");
  CHECK(tripled.reward == Approx(3.0 * raw.reward).epsilon(1e-9));
  CHECK(tripled.loss == Approx(mixed.loss).epsilon(1e-5));
  CHECK(max_weight_difference(tripled.model, mixed.model) < 1e-7);
  const auto raw_mixed = step(false, 1.0, 0.5, "raw-mixed");
  const auto raw_tripled = step(false, 3.0, 0.5, "raw-tripled");
  CHECK(raw_tripled.loss == Approx(raw_mixed.loss + 2.0 * raw.loss).epsilon(1e-5));
  CHECK(max_weight_difference(raw_tripled.model, raw_mixed.model) > 1e-6);
}

TEST_CASE("the trainer refuses bad SCST options, naming them", "[scst]") {
  Tiny t;
  auto model = t.model();
  auto train = t.split(true, model);
  auto refuses = [&](auto change, const std::string& what) {
    auto o = scst_options(t, "bad");
    change(o);
    CHECK_THROWS_WITH(imcap::Trainer(model, train, nullptr, o), Catch::Contains(what));
  };
  refuses([](imcap::TrainerOptions& o) { o.scst.samples = 1; }, "samples");
  refuses([](imcap::TrainerOptions& o) { o.scst.samples = 0; }, "samples");
  refuses([](imcap::TrainerOptions& o) { o.scst.temperature = 0; }, "temperature");
  refuses([](imcap::TrainerOptions& o) { o.scst.top_k = -1; }, "top_k");
  refuses([](imcap::TrainerOptions& o) { o.scst.max_length = 1; }, "max_length");
  refuses([](imcap::TrainerOptions& o) { o.scst.bleu_weight = -1; }, "bleu_weight");
  refuses([](imcap::TrainerOptions& o) { o.scst.cider_weight = 0; }, "cider_weight");
  refuses([](imcap::TrainerOptions& o) { o.scst.xe_weight = -1; }, "xe_weight");
  refuses([](imcap::TrainerOptions& o) { o.scst.xe_weight = NAN; }, "xe_weight");
  refuses([](imcap::TrainerOptions& o) { o.batching = imcap::BatchMode::kPadded; }, "image_major");
  auto greedy_one = scst_options(t, "ok");
  greedy_one.scst.baseline = imcap::ScstBaseline::kGreedy;
  greedy_one.scst.samples = 1;
  CHECK_NOTHROW(imcap::Trainer(model, train, nullptr, greedy_one));
}

TEST_CASE("SCST's samples reach as far as the captions the search writes, by default", "[scst]") {
  // With 16 tokens (the former default), counted as the search counts them, a Show and Tell
  // model's samples had room for 14 words where predict writes up to 18.
  CHECK(imcap::ScstOptions{}.max_length == imcap::SearchOptions{}.max_length);
  CHECK(imcap::SampleOptions{}.max_length == imcap::SearchOptions{}.max_length);
  Tiny t;
  auto model = t.model();
  const auto train = t.split(true, model);
  const auto special = imcap::SpecialTokens::of(model.vocab());
  {
    // Neither <end> nor <start> is ever likely: every caption runs to the limit.
    torch::NoGradGuard no_grad;
    model.decoder()->linear->bias[special.end].fill_(-1e4);
    model.decoder()->linear->bias[special.start].fill_(-1e4);
  }
  const imcap::ScstOptions o;  // the defaults
  const imcap::detail::ScstReward reward(train, o);
  const std::vector<std::int64_t> ids(train.image_ids().begin(), train.image_ids().begin() + 3);
  torch::manual_seed(3);
  const auto features = torch::randn({3, model.decoder()->options().embed_size});
  model.train(false);
  const auto greedy = imcap::greedy_search(imcap::DecoderStepper(model.decoder()), features,
                                           imcap::SearchOptions{}, special);
  REQUIRE(greedy.size() == 3);
  model.train(true);
  const auto s = imcap::detail::scst_loss(model, features, ids, o, reward,
                                          at::make_generator<at::CPUGeneratorImpl>(4));
  REQUIRE(s.tokens.dim() == 2);
  CHECK(s.tokens.size(0) == 3 * o.samples);
  for (const auto& h : greedy) {
    CHECK_FALSE(h.finished);
    CHECK(static_cast<std::int64_t>(h.tokens.size()) == s.tokens.size(1));
  }
  CHECK(s.tokens.size(1) == imcap::SearchOptions{}.max_length);
}

TEST_CASE("imcap train --objective scst fine-tunes a model file", "[scst][cli]") {
  Tiny t;
  const auto& f = t.files;
  REQUIRE(imcap::test::run_cli(imcap::test::tiny_train_args(
                                   f, t.tmp.file("xe"), {"--epochs", "1", "--batch-size", "20"}))
              .exit_code == 0);
  const auto xe = t.tmp.file("xe/last.imcap");
  auto scst = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"train",
                                     "--annotations",
                                     f.train_annotations,
                                     "--images",
                                     f.train_images,
                                     "--val-annotations",
                                     f.val_annotations,
                                     "--val-images",
                                     f.val_images,
                                     "--out",
                                     t.tmp.file("scst"),
                                     "--objective",
                                     "scst",
                                     "--epochs",
                                     "1",
                                     "--batch-size",
                                     "20",
                                     "--log-interval",
                                     "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    return imcap::test::run_cli(args).exit_code;
  };
  CHECK(scst({}) == 2);                                          // no --init-from
  CHECK(scst({"--init-from", xe, "--hidden-size", "64"}) == 2);  // architecture is the file's
  CHECK(scst({"--init-from", xe, "--baseline", "best"}) == 2);
  CHECK(scst({"--init-from", xe, "--samples", "3", "--baseline", "greedy", "--temperature", "0.8",
              "--bleu-weight", "0.5", "--no-reward-end", "--xe-weight", "0.5",
              "--no-relative-advantage"}) == 0);
  const auto saved = imcap::CaptionModel::load(t.tmp.file("scst/last.imcap"));
  CHECK(saved.vocab() == imcap::CaptionModel::load(xe).vocab());
  std::ifstream log(t.tmp.file("scst/log.jsonl"));
  std::string line;
  bool reward = false, xe_loss = false;
  while (std::getline(log, line)) {
    const auto j = nlohmann::json::parse(line);
    reward = reward || j.contains("reward");
    xe_loss = xe_loss || j.contains("xe_loss");
  }
  CHECK(reward);
  CHECK(xe_loss);
  CHECK(scst({"--init-from", xe, "--xe-weight", "-1"}) == 2);
}
