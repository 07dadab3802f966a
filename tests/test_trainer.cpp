// Trainer: resume, validation and best.imcap, refusals, on tiny synthetic data.
#include "catch.hpp"

#include <cmath>
#include <fstream>
#include <future>
#include <map>
#include <thread>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/fused_adam.hpp"
#include "detail/io.hpp"
#include "imcap/captioner.hpp"
#include "imcap/data_loader.hpp"
#include "imcap/error.hpp"
#include "imcap/metrics.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/trainer.hpp"
#include "imcap/weights.hpp"
#include "support.hpp"
#include "tiny.hpp"

namespace {

using imcap::test::Tiny;

// A checkpoint's tensors and metadata, to be written back with another training state.
struct Checkpoint {
  std::map<std::string, std::string> meta;  // before `tensors`, which fills it
  imcap::TensorMap tensors;

  explicit Checkpoint(const std::string& path) : tensors(imcap::load_safetensors(path, &meta)) {}
  nlohmann::json training() const { return nlohmann::json::parse(meta.at("training")); }
  // The tensors with `training.optimizer` replaced.
  imcap::TensorMap with_optimizer(const torch::Tensor& optimizer) const {
    imcap::TensorMap out;
    for (const auto& [name, tensor] : tensors)
      out.insert(name, name == "training.optimizer" ? optimizer : tensor);
    return out;
  }
  // Writes `path` with `training` as the training state's JSON text.
  void write(const std::string& path, const std::string& training,
             const imcap::TensorMap* other_tensors = nullptr) const {
    auto m = meta;
    m["training"] = training;
    imcap::save_safetensors(path, other_tensors != nullptr ? *other_tensors : tensors, m);
  }
};

}  // namespace

TEST_CASE("a resumed run reproduces the uninterrupted run's losses", "[trainer]") {
  Tiny t;
  auto model_a = t.model();
  imcap::CocoDataset train(t.files.train_annotations, t.files.train_images, *t.vocab,
                           model_a.eval_transform());
  imcap::CocoDataset val(t.files.val_annotations, t.files.val_images, *t.vocab,
                         model_a.eval_transform());
  const auto full = imcap::Trainer(model_a, train, &val, t.options("a")).fit();
  REQUIRE(full.losses.size() >= 8);
  CHECK_FALSE(full.stopped_early);
  CHECK(full.epochs_completed == 2);
  CHECK(imcap::detail::path_exists(t.tmp.file("a/last.imcap")));
  CHECK(imcap::detail::path_exists(t.tmp.file("a/best.imcap")));
  CHECK(full.has_validation);
  CHECK(full.last_validation.images == 6);

  // Stop in the middle of the first epoch, then resume from last.imcap.
  auto model_b = t.model();
  auto o = t.options("b");
  o.max_steps = 3;
  const auto first = imcap::Trainer(model_b, train, &val, o).fit();
  CHECK(first.stopped_early);
  REQUIRE(first.losses.size() == 3);
  auto model_c = imcap::CaptionModel::load(t.tmp.file("b/last.imcap"));
  o.max_steps = 0;
  o.resume = true;
  const auto rest = imcap::Trainer(model_c, train, &val, o).fit();
  std::vector<double> joined = first.losses;
  joined.insert(joined.end(), rest.losses.begin(), rest.losses.end());
  REQUIRE(joined.size() == full.losses.size());
  for (std::size_t i = 0; i < joined.size(); ++i) CHECK(joined[i] == full.losses[i]);
  CHECK(rest.steps == full.steps);
  // The log has step and validation lines: the stopped run validated its final state (step
  // 3), the resumed one the end of each epoch.
  std::ifstream log(t.tmp.file("b/log.jsonl"));
  std::string line;
  std::vector<std::size_t> validated;
  while (std::getline(log, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "validation") validated.push_back(j["step"].get<std::size_t>());
  }
  REQUIRE(validated.size() == 3);
  CHECK(validated[0] == 3);
  CHECK(validated[2] == full.steps);
}

TEST_CASE("best.imcap is never older than the last validated state", "[trainer]") {
  Tiny t;
  auto model = t.model();
  const auto train = t.split(/*training=*/true, model), val = t.split(false, model);
  const auto best_step = [&](const std::string& dir) {
    return Checkpoint(t.tmp.file(dir + "/best.imcap")).training()["global_step"].get<std::size_t>();
  };
  // A stop on max_steps in the middle of the first epoch validates the final state: best.imcap
  // exists and is that state (it is the only validation).
  auto o = t.options("stop");
  o.max_steps = 2;
  const auto stopped = imcap::Trainer(model, train, &val, o).fit();
  CHECK(stopped.stopped_early);
  REQUIRE(stopped.has_validation);
  CHECK(stopped.best_validation.cider == stopped.last_validation.cider);
  CHECK(best_step("stop") == 2);
  // last.imcap records the best validation, so that a resumed run compares against it.
  CHECK(Checkpoint(t.tmp.file("stop/last.imcap")).training()["best"]["cider"].get<double>() ==
        stopped.best_validation.cider);
  // Without validate_at_stop, nothing validated the state and there is no best.imcap.
  auto model2 = t.model();
  o = t.options("nostop");
  o.max_steps = 2;
  o.validate_at_stop = false;
  CHECK_FALSE(imcap::Trainer(model2, train, &val, o).fit().has_validation);
  CHECK_FALSE(imcap::detail::path_exists(t.tmp.file("nostop/best.imcap")));
  // val_every_steps validates inside the epochs too; best.imcap is the state of the best CIDEr
  // among all of them, and never one that was not validated.
  auto model3 = t.model();
  o = t.options("every");
  o.val_every_steps = 1;
  const auto every = imcap::Trainer(model3, train, &val, o).fit();
  std::ifstream log(t.tmp.file("every/log.jsonl"));
  std::string line;
  std::map<std::size_t, double> cider_at;
  while (std::getline(log, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "validation")
      cider_at[j["step"].get<std::size_t>()] = j["cider"].get<double>();
  }
  CHECK(cider_at.size() == every.steps);  // every step, once (an epoch's end is not repeated)
  double best = -1;
  std::size_t best_at = 0;
  for (const auto& [step, cider] : cider_at)
    if (cider > best) best = cider, best_at = step;
  CHECK(every.best_validation.cider == best);
  CHECK(best_step("every") == best_at);
}

TEST_CASE("the trainer refuses a mismatched resume and bad options", "[trainer]") {
  Tiny t;
  auto model = t.model();
  imcap::CocoDataset train(t.files.train_annotations, t.files.train_images, *t.vocab,
                           model.eval_transform());
  auto o = t.options("x");
  o.resume = true;
  CHECK_THROWS_WITH(imcap::Trainer(model, train, nullptr, o),
                    Catch::Contains("no checkpoint to resume from"));
  o.resume = false;
  o.max_steps = 1;
  imcap::Trainer(model, train, nullptr, o).fit();
  o.resume = true;
  o.batch_size = 7;
  CHECK_THROWS_WITH(imcap::Trainer(model, train, nullptr, o),
                    Catch::Contains("resume with the same"));
  o.optimizer = static_cast<imcap::Optimizer>(7);
  CHECK_THROWS_AS(imcap::Trainer(model, train, nullptr, o), imcap::InvalidArgument);
  CHECK(imcap::parse_optimizer("sgd") == imcap::Optimizer::kSgd);
  CHECK(imcap::to_string(imcap::Optimizer::kAdam) == "adam");
  CHECK_THROWS_WITH(imcap::parse_optimizer("rmsprop"),
                    "unknown optimizer 'rmsprop': expected adam or sgd");
}

TEST_CASE("a resume checks every value of the checkpoint's training state", "[trainer]") {
  Tiny t;
  auto model = t.model();
  imcap::CocoDataset train(t.files.train_annotations, t.files.train_images, *t.vocab,
                           model.eval_transform());
  auto o = t.options("src");
  o.max_steps = 1;
  imcap::Trainer(model, train, nullptr, o).fit();
  const Checkpoint saved(t.tmp.file("src/last.imcap"));
  const auto state = saved.training();
  REQUIRE(state.at("epoch") == 0);
  REQUIRE(state.at("step_in_epoch") == 1);
  REQUIRE(state.at("global_step") == 1);
  imcap::DataLoaderOptions lo;
  lo.batch_size = o.batch_size;
  lo.mode = o.batching;
  lo.seed = o.seed;
  const std::size_t batches = imcap::DataLoader(train, lo).batches_in_epoch(0);
  REQUIRE(batches >= 2);

  // Resumes (constructs the Trainer) from a copy with this training state in a fresh folder:
  // "ok", or the exception's kind and message.
  int copies = 0;
  o.max_steps = 0;
  o.resume = true;
  const auto resume = [&](const std::string& training,
                          const imcap::TensorMap* tensors = nullptr) -> std::string {
    o.out_dir = t.tmp.file("copy" + std::to_string(copies++));
    imcap::detail::create_directories(o.out_dir);
    saved.write(o.out_dir + "/last.imcap", training, tensors);
    try {
      imcap::Trainer(model, train, nullptr, o);
    } catch (const imcap::FormatError& e) {
      return std::string("FormatError: ") + e.what();
    } catch (const imcap::InvalidArgument& e) {
      return std::string("InvalidArgument: ") + e.what();
    }
    return "ok";
  };
  const auto with = [&](const std::string& key, const nlohmann::json& value) {
    auto j = state;
    j[key] = value;
    return resume(j.dump());
  };
  // A FormatError that names the file and the key, and no nlohmann exception text.
  const auto refused = [&](const std::string& message, const std::string& what) {
    INFO(message);
    CHECK_THAT(message, Catch::StartsWith("FormatError: " + t.tmp.path() + "/copy") &&
                            Catch::Contains("/last.imcap: " + what) &&
                            !Catch::Contains("json.exception"));
  };
  CHECK(resume(state.dump()) == "ok");
  auto next_epoch = state;
  next_epoch["epoch"] = 1;
  next_epoch["step_in_epoch"] = 0;
  next_epoch["global_step"] = batches;
  next_epoch["bad_epochs"] = 1;
  next_epoch["best_val_loss"] = nullptr;
  CHECK(resume(next_epoch.dump()) == "ok");

  const auto huge = std::uint64_t{1000000000000000};
  refused(with("epoch", -3), "training.epoch: expected an integer from 0 to");
  refused(with("epoch", huge), "training.epoch: expected an integer from 0 to");
  refused(with("epoch", 0.5), "training.epoch: expected");
  refused(with("epoch", true), "training.epoch: expected");
  CHECK_THAT(with("epoch", 3), Catch::StartsWith("InvalidArgument: ") &&
                                   Catch::Contains("training.epoch") &&
                                   Catch::Contains("resume with at least 3 epochs"));
  refused(with("step_in_epoch", huge), "training.step_in_epoch: expected an integer from 0 to");
  refused(with("step_in_epoch", -5), "training.step_in_epoch");
  refused(with("step_in_epoch", batches), "training.step_in_epoch");
  auto done = state;
  done["epoch"] = 2;  // the run's last epoch is done: no batch of it is left
  refused(resume(done.dump()), "training.step_in_epoch: expected 0");
  refused(with("global_step", 0), "training.global_step: expected 1 ");
  refused(with("global_step", huge), "training.global_step");
  refused(with("lr", -1.0), "training.lr: expected a finite number > 0, got -1.0");
  refused(with("lr", 0.0), "training.lr");
  refused(with("lr", "0.001"), "training.lr");
  refused(with("lr", nullptr), "training.lr");
  refused(with("seed", "x"), "training.seed: expected a non-negative integer, got \"x\"");
  refused(with("batch_size", 0), "training.batch_size");
  refused(with("optimizer", 5), "training.optimizer: expected a string, got 5");
  refused(with("batching", nullptr), "training.batching");
  refused(with("bad_epochs", -1), "training.bad_epochs");
  refused(with("bad_epochs", 1), "training.bad_epochs: expected an integer from 0 to 0");
  refused(with("best_val_loss", "x"), "training.best_val_loss");
  refused(with("best_val_loss", -1.0), "training.best_val_loss");
  refused(with("best", 5), "training.best: expected an object");
  refused(with("best", {{"loss", 1.0}}), "training: missing key 'best.perplexity'");
  refused(with("best", {{"loss", 1.0}, {"perplexity", 2.7}, {"bleu4", 0}, {"cider", "x"}}),
          "training.best.cider: expected");
  auto no_epoch = state;
  no_epoch.erase("epoch");
  refused(resume(no_epoch.dump()), "training: missing key 'epoch'");
  refused(resume("{"), "training: not valid JSON");
  refused(resume("{\"epoch\": 1e500}"), "training: not valid JSON");
  refused(resume("[]"), "training: expected a JSON object, got []");
  // The optimizer's bytes: another type, garbage, another model's state.
  const auto floats = saved.with_optimizer(torch::zeros({4}));
  refused(resume(state.dump(), &floats), "tensor 'training.optimizer'");
  const auto garbage = saved.with_optimizer(torch::randint(0, 255, {300}, torch::kUInt8));
  refused(resume(state.dump(), &garbage), "training.optimizer: not a state of the adam optimizer");
  imcap::test::TinyConfig other_config;
  other_config.inject = imcap::ImageInject::kPar;
  other_config.trainable_stages = 1;
  other_config.hidden_size = 24;
  auto other = imcap::test::tiny_model(*t.vocab, 5, other_config);
  auto other_options = t.options("other");
  other_options.max_steps = 1;
  imcap::Trainer(other, train, nullptr, other_options).fit();
  const auto foreign = saved.with_optimizer(
      Checkpoint(t.tmp.file("other/last.imcap")).tensors.at("training.optimizer"));
  refused(resume(state.dump(), &foreign), "training.optimizer: the state of a parameter");

  // The command line reports it too (it used to train 0 epochs and exit 0).
  auto r = imcap::test::run_cli(imcap::test::tiny_train_args(
      t.files, t.tmp.file("cli"), {"--epochs", "1", "--batch-size", "20", "--max-steps", "1"}));
  REQUIRE(r.exit_code == 0);
  Checkpoint cli(t.tmp.file("cli/last.imcap"));
  auto j = cli.training();
  j["epoch"] = -3;
  cli.write(t.tmp.file("cli/last.imcap"), j.dump());
  r = imcap::test::run_cli(imcap::test::tiny_train_args(
      t.files, t.tmp.file("cli"), {"--epochs", "2", "--batch-size", "20", "--resume"}));
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains(t.tmp.file("cli/last.imcap") + ": training.epoch: expected"));
}

namespace {

// The learning rate and elapsed seconds of each logged step of `log`, by global step.
std::map<std::size_t, std::pair<double, double>> logged_rates(const std::string& log) {
  std::map<std::size_t, std::pair<double, double>> out;
  std::ifstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "step")
      out[j["step"].get<std::size_t>()] = {j["lr"].get<double>(), j["elapsed_s"].get<double>()};
  }
  return out;
}

}  // namespace

TEST_CASE(
    "the last share of the budget trains at the cut rate, and a resume cuts where the "
    "uninterrupted run did",
    "[trainer]") {
  Tiny t;
  auto base = t.options("unused");
  base.log_interval = 1;
  base.lr = 1e-3;
  // The defaults, as docs/training.md gives them: the last quarter at 0.3 times the rate.
  REQUIRE(base.lr_anneal_share == 0.25);
  REQUIRE(base.lr_anneal_factor == 0.3);
  const double cut_rate = 3e-4;
  // Trains a fresh tiny model with `o` into `dir`: what fit() returned and the log's rates.
  const auto train_into = [&](imcap::TrainerOptions o, const std::string& dir) {
    auto model = t.model();
    const auto train = t.split(/*training=*/true, model);
    o.out_dir = t.tmp.file(dir);
    const auto r = imcap::Trainer(model, train, nullptr, o).fit();
    return std::make_pair(r, logged_rates(t.tmp.file(dir + "/log.jsonl")));
  };

  SECTION("a budget of steps: the last quarter of max_steps") {
    auto o = base;
    o.epochs = 100;
    o.max_steps = 8;
    const auto [r, rates] = train_into(o, "steps");
    REQUIRE(r.steps == 8);
    REQUIRE(rates.size() == 8);
    for (const auto& [step, rate] : rates)
      CHECK(rate.first == Approx(step <= 6 ? 1e-3 : cut_rate).epsilon(1e-12));
  }

  SECTION("a budget of epochs: the cut falls inside the last epoch, and share 0 keeps the rate") {
    auto o = base;
    o.lr_anneal_share = 0.5;
    o.lr_anneal_factor = 0.25;
    const auto [r, rates] = train_into(o, "epochs");
    REQUIRE(rates.size() == r.steps);
    const std::size_t per_epoch = r.steps / 2;
    REQUIRE(per_epoch >= 2);
    for (const auto& [step, rate] : rates)
      CHECK(rate.first == Approx(step <= per_epoch ? 1e-3 : 2.5e-4).epsilon(1e-12));

    o.lr_anneal_share = 0;
    for (const auto& [step, rate] : train_into(o, "off").second) CHECK(rate.first == 1e-3);
  }

  SECTION("a run stopped and resumed step by step cuts at the same step, with the same losses") {
    auto o = base;
    o.validate_at_stop = false;
    const auto whole = train_into(o, "whole");
    REQUIRE(whole.first.steps >= 4);
    // The same run, one step per fit(): each asks to stop before it starts, then resumes.
    o.out_dir = t.tmp.file("pieces");
    std::vector<double> losses;
    for (std::size_t i = 0; i < whole.first.steps; ++i) {
      o.resume = i > 0;
      auto m = i == 0 ? t.model() : imcap::CaptionModel::load(t.tmp.file("pieces/last.imcap"));
      const auto train = t.split(/*training=*/true, m);
      imcap::Trainer trainer(m, train, nullptr, o);
      trainer.request_stop();
      const auto r = trainer.fit();
      REQUIRE(r.losses.size() == 1);
      losses.push_back(r.losses[0]);
    }
    REQUIRE(losses.size() == whole.first.losses.size());
    for (std::size_t i = 0; i < losses.size(); ++i) CHECK(losses[i] == whole.first.losses[i]);
    const auto& a = whole.second;
    const auto b = logged_rates(t.tmp.file("pieces/log.jsonl"));
    REQUIRE(a.size() == b.size());
    for (const auto& [step, rate] : a) CHECK(b.at(step).first == rate.first);
    CHECK(a.rbegin()->second.first == Approx(cut_rate).epsilon(1e-12));  // the last step is cut
  }

  SECTION("a time budget: the steps that start after its share passed run at the cut rate") {
    auto o = base;
    o.epochs = 100000;
    o.max_seconds = 2.0;
    o.lr_anneal_share = 0.5;
    const auto rates = train_into(o, "time").second;
    std::size_t cut = 0;
    for (auto it = rates.begin(); it != rates.end(); ++it) {
      const auto next = std::next(it);
      // A step that ended before 1 s started before it: the full rate.
      if (it->second.second < 1.0) CHECK(it->second.first == 1e-3);
      // The step after one that ended past 1 s starts past it: the cut rate.
      if (next != rates.end() && it->second.second >= 1.0) {
        CHECK(next->second.first == Approx(cut_rate).epsilon(1e-12));
        ++cut;
      }
    }
    CHECK(cut >= 1);
  }

  SECTION("bad shares and factors are refused") {
    auto model = t.model();
    const auto train = t.split(/*training=*/true, model);
    auto o = base;
    o.lr_anneal_share = 1.0;
    CHECK_THROWS_WITH(imcap::Trainer(model, train, nullptr, o),
                      Catch::Contains("lr_anneal_share = 1 must be in [0, 1)"));
    o.lr_anneal_share = 0.25;
    o.lr_anneal_factor = 0.0;
    CHECK_THROWS_WITH(imcap::Trainer(model, train, nullptr, o),
                      Catch::Contains("lr_anneal_factor = 0 must be in (0, 1]"));
    o.lr_anneal_factor = NAN;
    CHECK_THROWS_AS(imcap::Trainer(model, train, nullptr, o), imcap::InvalidArgument);
  }
}
