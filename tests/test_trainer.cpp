// Trainer, Captioner and the train/caption/predict/demo commands, on tiny synthetic data.
#include "catch.hpp"

#include <cmath>
#include <fstream>
#include <future>
#include <thread>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/fused_adam.hpp"
#include "detail/io.hpp"
#include "imcap/captioner.hpp"
#include "imcap/error.hpp"
#include "imcap/metrics.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/trainer.hpp"
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
  // The log has step and validation lines.
  std::ifstream log(t.tmp.file("b/log.jsonl"));
  std::string line;
  int validations = 0;
  while (std::getline(log, line))
    validations += nlohmann::json::parse(line)["type"] == "validation";
  CHECK(validations == 2);
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
  o.optimizer = "rmsprop";
  CHECK_THROWS_AS(imcap::Trainer(model, train, nullptr, o), imcap::InvalidArgument);
  // A training state that nlohmann cannot read is a FormatError naming the checkpoint.
  const std::string last = o.out_dir + "/last.imcap";
  imcap::TrainingState state;
  const auto saved = imcap::CaptionModel::load(last, torch::kCPU, &state);
  state.json = R"({"epoch": 1e400})";
  saved.save(last, &state);
  o = t.options("x");
  o.resume = true;
  CHECK_THROWS_WITH(imcap::Trainer(model, train, nullptr, o),
                    Catch::StartsWith(last + ": training state: ") && Catch::Contains("1e400"));
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
