// Checkpoints: the training progress's JSON, its checks, and the model file that carries it.
#include "catch.hpp"

#include <cmath>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "imcap/checkpoint.hpp"
#include "imcap/error.hpp"
#include "support.hpp"
#include "tiny.hpp"

namespace {

imcap::TrainingProgress some_progress() {
  imcap::TrainingProgress p;
  p.epoch = 2;
  p.step_in_epoch = 7;
  p.global_step = 57;
  p.lr = 5e-4;
  p.optimizer = "adam";
  p.seed = 11;
  p.batch_size = 160;
  p.batching = "image_major";
  p.best_val_loss = 1.25;
  p.bad_epochs = 1;
  imcap::Validation best;
  best.loss = 1.25;
  best.perplexity = std::exp(1.25);
  best.bleu4 = 0.5;
  best.cider = 2.5;
  best.images = 400;
  p.best = best;
  return p;
}

// The message of the FormatError that reading `json` throws, or "" when it reads.
std::string refusal(const nlohmann::json& json) {
  try {
    imcap::training_progress_from_json(json.dump(), "run/last.imcap");
  } catch (const imcap::FormatError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("training progress round-trips through its JSON", "[checkpoint]") {
  const imcap::TrainingProgress p = some_progress();
  const imcap::TrainingProgress q =
      imcap::training_progress_from_json(imcap::training_progress_to_json(p), "x");
  CHECK(q.epoch == p.epoch);
  CHECK(q.step_in_epoch == p.step_in_epoch);
  CHECK(q.global_step == p.global_step);
  CHECK(q.lr == p.lr);
  CHECK(q.optimizer == p.optimizer);
  CHECK(q.seed == p.seed);
  CHECK(q.batch_size == p.batch_size);
  CHECK(q.batching == p.batching);
  CHECK(q.best_val_loss == p.best_val_loss);
  CHECK(q.bad_epochs == p.bad_epochs);
  REQUIRE(q.best.has_value());
  CHECK(q.best->cider == p.best->cider);
  CHECK(q.best->images == p.best->images);

  // No validation yet: an infinite best loss is stored as null, and no "best".
  imcap::TrainingProgress fresh = p;
  fresh.best_val_loss = INFINITY;
  fresh.best.reset();
  const auto j = nlohmann::json::parse(imcap::training_progress_to_json(fresh));
  CHECK(j.at("best_val_loss").is_null());
  CHECK_FALSE(j.contains("best"));
  const auto back = imcap::training_progress_from_json(j.dump(), "x");
  CHECK(std::isinf(back.best_val_loss));
  CHECK_FALSE(back.best.has_value());
}

TEST_CASE("training progress names the file and the key of a bad value", "[checkpoint]") {
  const auto good = nlohmann::json::parse(imcap::training_progress_to_json(some_progress()));
  CHECK(refusal(good).empty());
  const auto with = [&](const std::string& key, const nlohmann::json& value) {
    auto j = good;
    j[key] = value;
    return refusal(j);
  };
  CHECK(with("lr", -1.0) == "run/last.imcap: training.lr: expected a finite number > 0, got -1.0");
  CHECK(with("epoch", -3) ==
        "run/last.imcap: training.epoch: expected an integer from 0 to 2147483647, got -3");
  CHECK(with("seed", "x") ==
        "run/last.imcap: training.seed: expected a non-negative integer, got \"x\"");
  CHECK(with("optimizer", 5) == "run/last.imcap: training.optimizer: expected a string, got 5");
  CHECK(with("best", 5) == "run/last.imcap: training.best: expected an object, got 5");
  CHECK_THAT(with("best", {{"loss", 1.0}}), Catch::Contains("missing key 'best.perplexity'"));
  auto no_step = good;
  no_step.erase("global_step");
  CHECK(refusal(no_step) == "run/last.imcap: training: missing key 'global_step'");
  CHECK_THAT(refusal(nlohmann::json::array()), Catch::Contains("expected a JSON object, got []"));
  CHECK_THROWS_WITH(imcap::training_progress_from_json("{", "run/last.imcap"),
                    Catch::StartsWith("run/last.imcap: training: not valid JSON"));
}

TEST_CASE("a checkpoint file holds the model, the progress and the optimizer's bytes",
          "[checkpoint]") {
  imcap::test::TempDir tmp;
  const auto vocab =
      imcap::Vocabulary::build_from_captions({"a red circle", "a blue square"}, {/*threshold=*/1});
  const imcap::CaptionModel model = imcap::test::tiny_model(vocab, 5);
  imcap::Checkpoint c;
  c.progress = some_progress();
  c.optimizer_state = std::string("\x00\x01\xffoptimizer", 12);
  imcap::save_checkpoint(tmp.file("c.imcap"), model, c);

  imcap::Checkpoint back;
  const imcap::CaptionModel loaded = imcap::load_checkpoint(tmp.file("c.imcap"), torch::kCPU, back);
  CHECK(back.optimizer_state == c.optimizer_state);
  CHECK(back.progress.global_step == 57);
  CHECK(back.progress.best->bleu4 == 0.5);
  CHECK(loaded.vocab() == model.vocab());
  const auto a = model.decoder()->named_parameters();
  for (const auto& p : loaded.decoder()->named_parameters())
    CHECK(torch::equal(p.value(), a[p.key()]));
  // It is a model file too.
  CHECK_NOTHROW(imcap::CaptionModel::load(tmp.file("c.imcap")));

  // A plain model file has no training state.
  model.save(tmp.file("plain.imcap"));
  imcap::Checkpoint none;
  CHECK_THROWS_WITH(imcap::load_checkpoint(tmp.file("plain.imcap"), torch::kCPU, none),
                    tmp.file("plain.imcap") + ": holds no training state to resume from");

  // The optimizer's bytes must be a uint8 vector.
  imcap::TrainingState state = imcap::to_training_state(c);
  CHECK(state.tensors.at("optimizer").scalar_type() == torch::kUInt8);
  imcap::TrainingState floats;
  floats.json = state.json;
  floats.tensors.insert("optimizer", torch::zeros({3}));
  CHECK_THROWS_WITH(imcap::checkpoint_from_training_state(floats, "f.imcap"),
                    Catch::StartsWith("f.imcap: tensor 'training.optimizer': expected the "
                                      "optimizer's bytes (uint8, one dimension)"));
}
