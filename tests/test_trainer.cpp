// Trainer, Captioner and the train/caption/predict/demo commands, on tiny synthetic data.
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

// Par-inject with the last ResNet stage training.
struct Tiny : imcap::test::TinyDataset {
  imcap::CaptionModel model() const {
    imcap::test::TinyConfig t;
    t.inject = imcap::ImageInject::kPar;
    t.trainable_stages = 1;
    return imcap::test::tiny_model(*vocab, 5, t);
  }
  imcap::TrainerOptions options(const std::string& out) const {
    return imcap::test::tiny_trainer_options(tmp.file(out));
  }
  imcap::CocoDataset split(bool training, const imcap::CaptionModel& m) const {
    return training ? imcap::CocoDataset(files.train_annotations, files.train_images, *vocab,
                                         m.eval_transform())
                    : imcap::CocoDataset(files.val_annotations, files.val_images, *vocab,
                                         m.eval_transform());
  }
};

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

TEST_CASE("the trainer's fused Adam step equals torch::optim::Adam and shares its state",
          "[trainer]") {
  using imcap::detail::FusedAdam;
  using torch::optim::AdamOptions;
  using torch::optim::OptimizerParamGroup;
  const int saved_threads = torch::get_num_threads();
  // Parameters of several sizes (one not a multiple of any vector width, one split between
  // threads), with gradients that change every step.
  auto make_params = [] {
    torch::manual_seed(5);
    return std::vector<torch::Tensor>{torch::randn({3}).requires_grad_(),
                                      torch::randn({70000}).requires_grad_(),
                                      torch::randn({17, 9}).requires_grad_()};
  };
  auto set_grads = [](std::vector<torch::Tensor>& params, int step, double scale) {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < params.size(); ++i) {
      auto gen = torch::make_generator<torch::CPUGeneratorImpl>(100 * step + i);
      params[i].mutable_grad() = torch::randn(params[i].sizes(), gen) * (scale * (1.0 + step));
    }
    params[0].mutable_grad() = torch::Tensor();  // a parameter without a gradient is skipped
  };
  // The largest difference relative to 1 + |value|: float rounding leaves a few units in the
  // last place (about 1.2e-7 relative each); one wrong term of the update (of size lr) would
  // leave far more.
  auto max_rel = [](const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
      worst = std::max(worst, ((a[i] - b[i]).abs() / (b[i].abs() + 1)).max().item<double>());
    return worst;
  };
  // Two groups: the defaults, and the last parameter with its own rate, betas and decay.
  auto groups = [](const std::vector<torch::Tensor>& p, const AdamOptions& defaults) {
    std::vector<OptimizerParamGroup> g;
    g.emplace_back(std::vector<torch::Tensor>{p[0], p[1]});
    auto own = std::make_unique<AdamOptions>(defaults);
    own->lr(1e-2).betas({0.8, 0.99}).weight_decay(0.05);
    g.emplace_back(std::vector<torch::Tensor>{p[2]}, std::move(own));
    return g;
  };
  struct Case {
    int threads;
    double weight_decay, eps, grad_scale;
  };
  // Gradients of about 1e-7 make eps (1e-8) matter, as does eps = 0.1 for gradients of about 1.
  for (const Case c : {Case{1, 0, 1e-8, 1}, Case{2, 0, 1e-8, 1}, Case{2, 0.01, 1e-8, 1},
                       Case{1, 0, 1e-8, 1e-7}, Case{2, 0.01, 0.1, 1}}) {
    torch::set_num_threads(c.threads);
    INFO("threads " << c.threads << ", weight decay " << c.weight_decay << ", eps " << c.eps
                    << ", gradient scale " << c.grad_scale);
    const auto options = AdamOptions(3e-2).weight_decay(c.weight_decay).eps(c.eps);
    auto ref_params = make_params();
    auto fused_params = make_params();
    torch::optim::Adam ref(groups(ref_params, options), options);
    FusedAdam fused(groups(fused_params, options), options);
    for (int step = 0; step < 25; ++step) {
      set_grads(ref_params, step, c.grad_scale);
      set_grads(fused_params, step, c.grad_scale);
      const auto version = fused_params[1]._version();
      ref.step();
      fused.step();
      CHECK(fused_params[1]._version() > version);  // caches keyed on versions see the update
    }
    CHECK(torch::equal(fused_params[0], ref_params[0]));  // never stepped
    CHECK(!torch::equal(fused_params[1], make_params()[1]));
    INFO("largest relative difference: " << max_rel(fused_params, ref_params));
    CHECK(max_rel(fused_params, ref_params) < 1e-6);

    // Either optimizer's saved state loads into the other and goes on as the saver does.
    auto save = [](const torch::optim::Optimizer& opt) {
      std::ostringstream out;
      torch::serialize::OutputArchive archive;
      opt.save(archive);
      archive.save_to(out);
      return out.str();
    };
    auto load = [](torch::optim::Optimizer& opt, const std::string& bytes) {
      std::istringstream in(bytes);
      torch::serialize::InputArchive archive;
      archive.load_from(in);
      opt.load(archive);
    };
    auto copy = [](const std::vector<torch::Tensor>& params) {
      std::vector<torch::Tensor> out;
      for (const auto& p : params) out.push_back(p.detach().clone().requires_grad_());
      return out;
    };
    auto into_adam = copy(fused_params);
    auto into_fused = copy(ref_params);
    torch::optim::Adam adam_resumed(groups(into_adam, options), options);
    FusedAdam fused_resumed(groups(into_fused, options), options);
    load(adam_resumed, save(fused));
    load(fused_resumed, save(ref));
    for (auto* params : {&fused_params, &ref_params, &into_adam, &into_fused})
      set_grads(*params, 99, c.grad_scale);
    fused.step();
    ref.step();
    adam_resumed.step();
    fused_resumed.step();
    CHECK(max_rel(into_adam, fused_params) < 1e-6);
    CHECK(max_rel(into_fused, ref_params) < 1e-6);
  }
  torch::set_num_threads(saved_threads);
  // amsgrad is Adam's own step.
  auto a = make_params();
  auto b = make_params();
  torch::optim::Adam ref(a, AdamOptions(1e-2).amsgrad(true));
  FusedAdam fused(b, AdamOptions(1e-2).amsgrad(true));
  for (int step = 0; step < 3; ++step) {
    set_grads(a, step, 1);
    set_grads(b, step, 1);
    ref.step();
    fused.step();
  }
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i], b[i]));
}

TEST_CASE("the fused Adam's list path on CUDA gives Adam's results", "[trainer][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("CUDA is not available: nothing to compare");
    return;
  }
  using torch::optim::AdamOptions;
  torch::manual_seed(9);
  std::vector<torch::Tensor> ref, list;
  for (const auto& shape : {std::vector<int64_t>{300, 7}, std::vector<int64_t>{5}}) {
    const torch::Tensor init = torch::randn(shape, torch::kCUDA);
    ref.push_back(init.clone().requires_grad_());
    list.push_back(init.clone().requires_grad_());
  }
  const auto options = AdamOptions(1e-2).weight_decay(0.01);
  torch::optim::Adam adam(ref, options);
  imcap::detail::FusedAdam fused(list, options);
  for (int step = 0; step < 10; ++step) {
    for (std::size_t i = 0; i < ref.size(); ++i) {
      const torch::Tensor g = torch::randn(ref[i].sizes(), torch::kCUDA);
      ref[i].mutable_grad() = g.clone();
      list[i].mutable_grad() = g.clone();
    }
    adam.step();
    fused.step();
  }
  // A division may become a multiplication by the reciprocal on a GPU: the last bit may differ.
  for (std::size_t i = 0; i < ref.size(); ++i)
    CHECK(torch::allclose(list[i], ref[i], /*rtol=*/1e-5, /*atol=*/1e-6));
}

TEST_CASE("the fused Adam's list path (GPU parameters) gives Adam's results", "[trainer]") {
  // Parameters the CPU loop does not take (here: not contiguous, as a GPU's are not on the
  // CPU) are updated with one list operation per Adam operation. On the CPU those run Adam's
  // own per-tensor operations, so the results are Adam's bit for bit.
  using torch::optim::AdamOptions;
  auto make_params = [] {
    torch::manual_seed(7);
    return std::vector<torch::Tensor>{torch::randn({6, 4}).t().requires_grad_(),
                                      torch::randn({9, 5}).t().requires_grad_(),
                                      torch::randn({3, 2}).t().requires_grad_()};
  };
  for (const double weight_decay : {0.0, 0.02}) {
    INFO("weight decay " << weight_decay);
    auto ref_params = make_params();
    auto list_params = make_params();
    REQUIRE_FALSE(list_params[0].is_contiguous());
    const auto options = AdamOptions(2e-2).weight_decay(weight_decay);
    torch::optim::Adam ref(ref_params, options);
    imcap::detail::FusedAdam fused(list_params, options);
    for (int step = 0; step < 12; ++step) {
      for (auto* params : {&ref_params, &list_params}) {
        torch::NoGradGuard no_grad;
        for (std::size_t i = 0; i < params->size(); ++i) {
          auto gen = torch::make_generator<torch::CPUGeneratorImpl>(50 * step + i);
          (*params)[i].mutable_grad() = torch::randn((*params)[i].sizes(), gen);
        }
        // The last parameter has no gradient every third step: step counts then differ.
        if (step % 3 == 1) (*params)[2].mutable_grad() = torch::Tensor();
      }
      const auto version = list_params[1]._version();
      ref.step();
      fused.step();
      CHECK(list_params[1]._version() > version);
    }
    for (std::size_t i = 0; i < ref_params.size(); ++i) {
      INFO("parameter " << i);
      CHECK(torch::equal(list_params[i], ref_params[i]));
    }
    CHECK_FALSE(torch::equal(list_params[0], make_params()[0]));
  }
}

TEST_CASE("one Captioner serves several threads with the same captions as serial use",
          "[captioner]") {
  Tiny t;
  auto model = t.model();
  model.save(t.tmp.file("m.imcap"));
  const auto captioner = imcap::Captioner::load(t.tmp.file("m.imcap"));
  std::vector<std::string> paths;
  for (int id = 1000000; id < 1000006; ++id)
    paths.push_back(t.files.val_images + "/" + std::to_string(id) + ".jpg");
  std::vector<std::string> serial;
  for (const auto& p : paths) serial.push_back(captioner.caption(p).text);
  const auto batched = captioner.caption_batch(paths);
  for (std::size_t i = 0; i < paths.size(); ++i) CHECK(batched[i].text == serial[i]);
  std::vector<std::future<std::vector<std::string>>> jobs;
  for (int k = 0; k < 8; ++k)
    jobs.push_back(std::async(std::launch::async, [&] {
      std::vector<std::string> out;
      for (int rep = 0; rep < 3; ++rep)
        for (const auto& p : paths) out.push_back(captioner.caption(p).text);
      return out;
    }));
  for (auto& j : jobs) {
    const auto got = j.get();
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == serial[i % paths.size()]);
  }
  // Greedy captions equal the decoder's own greedy loop, cut at <end>.
  imcap::CaptionOptions greedy;
  greedy.beam_size = 1;
  greedy.forbid_unk = false;
  torch::NoGradGuard no_grad;
  const auto image = captioner.model().eval_transform()(imcap::decode_image(paths[0]));
  auto enc = captioner.model().encoder();
  auto dec = captioner.model().decoder();
  const auto features = enc->forward(image.unsqueeze(0));
  const auto ids = dec->sample(features, 20, captioner.model().vocab().end_id())[0];
  std::vector<std::int64_t> want(ids.data_ptr<std::int64_t>(),
                                 ids.data_ptr<std::int64_t>() + ids.numel());
  CHECK(captioner.caption_features(features, greedy)[0].text ==
        captioner.model().vocab().decode(want));
  CHECK_THROWS_WITH(captioner.caption(t.tmp.file("missing.jpg")), Catch::Contains("missing.jpg"));
}

TEST_CASE("train, caption, predict and eval from the command line", "[trainer][cli]") {
  Tiny t;
  const auto& f = t.files;
  auto r = imcap::test::run_cli(
      imcap::test::tiny_train_args(f, t.tmp.file("run"),
                                   {"--epochs", "1", "--batch-size", "20", "--flip-probability",
                                    "0", "--threads", "1", "--blas-threads", "2"}));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(imcap::detail::path_exists(t.tmp.file("run/best.imcap")));
  // The first line names the threads (OpenBLAS's only where LibTorch uses OpenBLAS).
  const std::string first_line = r.out.substr(0, r.out.find('\n'));
  CHECK_THAT(first_line, Catch::StartsWith("training resnet18") && Catch::Contains("Torch 1"));
  if (first_line.find("OpenBLAS") != std::string::npos)
    CHECK_THAT(first_line, Catch::EndsWith("threads: Torch 1, OpenBLAS 2"));
  const auto model = t.tmp.file("run/last.imcap");
  r = imcap::test::run_cli({"caption", "--model", model, f.val_images + "/1000000.jpg", "--json"});
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.out);
  REQUIRE(j.size() == 1);
  CHECK(j[0].contains("caption"));
  CHECK(j[0]["tokens"].is_array());
  CHECK(j[0]["log_prob"].get<double>() <= 0.0);
  // Compressed decode weights choose the same greedy words, with nearly the same log p.
  std::vector<nlohmann::json> greedy;
  for (const std::string weights : {"float32", "bfloat16", "int8"}) {
    r = imcap::test::run_cli({"caption", "--model", model, f.val_images + "/1000000.jpg", "--json",
                              "--beam", "1", "--decode-weights", weights});
    INFO(weights << ": " << r.err);
    REQUIRE(r.exit_code == 0);
    greedy.push_back(nlohmann::json::parse(r.out).at(0));
  }
  for (std::size_t i = 1; i < greedy.size(); ++i) {
    CHECK(greedy[i]["tokens"] == greedy[0]["tokens"]);
    CHECK(std::abs(greedy[i]["log_prob"].get<double>() - greedy[0]["log_prob"].get<double>()) <
          0.05);
  }
#ifdef IMCAP_EXAMPLES_DIR
  // The bundled example captions with the trained model, as the CLI does (both beam 3).
  const auto example = imcap::test::run_process(
      {std::string(IMCAP_EXAMPLES_DIR) + "/caption_image", model, f.val_images + "/1000000.jpg"});
  INFO(example.err);
  CHECK(example.exit_code == 0);
  CHECK_THAT(example.out, Catch::Contains(": " + j[0]["caption"].get<std::string>() + "  (log p"));
#endif
  r = imcap::test::run_cli({"predict", "--model", model, "--annotations", f.val_annotations,
                            "--images", f.val_images, "--out", t.tmp.file("results.json"), "--beam",
                            "2"});
  REQUIRE(r.exit_code == 0);
  const auto results = imcap::load_caption_results(t.tmp.file("results.json"));
  CHECK(results.size() == 6);
  r = imcap::test::run_cli({"eval", "--annotations", f.val_annotations, "--results",
                            t.tmp.file("results.json"), "--json"});
  CHECK(r.exit_code == 0);
  // Bad input and bad usage.
  r = imcap::test::run_cli({"caption", "--model", t.tmp.file("nope.imcap"), "x.jpg"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::StartsWith("imcap: error: ") && Catch::Contains("nope.imcap"));
  CHECK(imcap::test::run_cli({"caption", "--model", model, "--beam", "0", "x.jpg"}).exit_code == 2);
  CHECK(imcap::test::run_cli({"train", "--annotations", f.train_annotations, "--images",
                              f.train_images, "--out", t.tmp.file("r2"), "--lr", "fast"})
            .exit_code == 2);
  r = imcap::test::run_cli({"train", "--annotations", f.train_annotations, "--images",
                            f.train_images, "--out", t.tmp.file("r3"), "--resume"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("r3/last.imcap"));
}

TEST_CASE("imcap demo --quick runs end to end and writes a report", "[trainer][demo][slow]") {
  imcap::test::TempDir tmp;
  const auto r =
      imcap::test::run_cli({"demo", "--quick", "--seconds", "10", "--out", tmp.file("demo")});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("BLEU-4"));
  const auto html = imcap::test::read_text(tmp.file("demo/report.html"));
  CHECK_THAT(html, Catch::Contains("<svg") && Catch::Contains("data:image/jpeg;base64,"));
  CHECK(imcap::detail::path_exists(tmp.file("demo/model/last.imcap")));
}

TEST_CASE("the fused Adam step on channels_last weights equals Adam's", "[trainer]") {
  // The trainer keeps trainable convolution weights in channels_last on the CPU; their gradients
  // and moments share that layout, and the fused update runs over the raw memory.
  auto make = [] {
    torch::manual_seed(11);
    return torch::randn({8, 3, 5, 5}).contiguous(at::MemoryFormat::ChannelsLast).requires_grad_();
  };
  auto a = make(), b = make();
  REQUIRE_FALSE(a.is_contiguous());
  imcap::detail::FusedAdam fused({a}, torch::optim::AdamOptions(1e-2).weight_decay(0.01));
  torch::optim::Adam plain({b}, torch::optim::AdamOptions(1e-2).weight_decay(0.01));
  for (int step = 0; step < 6; ++step) {
    auto gen = torch::make_generator<torch::CPUGeneratorImpl>(step);
    // One step with a row-major gradient: the layouts differ, and the update must not run over
    // raw memory then.
    const auto g = step == 3
                       ? torch::randn({8, 3, 5, 5}, gen)
                       : torch::randn({8, 3, 5, 5}, gen).contiguous(at::MemoryFormat::ChannelsLast);
    a.mutable_grad() = g.clone(at::MemoryFormat::Preserve);
    b.mutable_grad() = g.clone(at::MemoryFormat::Preserve);
    fused.step();
    plain.step();
  }
  CHECK(((a - b).abs() / (b.abs() + 1)).max().item<double>() < 1e-6);
  CHECK(a.strides() == b.strides());
}
