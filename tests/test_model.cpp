// CaptionModel and its .imcap file.
#include "catch.hpp"

#include <fstream>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/io.hpp"
#include "imcap/checkpoint.hpp"
#include "imcap/error.hpp"
#include "imcap/features.hpp"
#include "imcap/import.hpp"
#include "imcap/model.hpp"
#include "imcap/weights.hpp"
#include "support.hpp"

namespace {

imcap::ModelConfig small_config() {
  imcap::ModelConfig c;
  c.encoder.arch = imcap::ResNetArch::kResNet18;
  c.encoder.embed_size = 16;
  c.decoder.hidden_size = 24;
  c.decoder.image_inject = imcap::ImageInject::kPar;
  c.image_resize = 40;
  c.image_crop = 32;
  return c;
}

imcap::Vocabulary small_vocab() {
  return imcap::Vocabulary::build_from_captions({"a red circle", "a blue square"},
                                                {/*threshold=*/1});
}

}  // namespace

TEST_CASE("a model file round-trips config, vocabulary, weights and training state", "[model]") {
  imcap::test::TempDir tmp;
  torch::manual_seed(3);
  imcap::CaptionModel model(small_config(), small_vocab());
  CHECK(model.config().decoder.vocab_size == static_cast<std::int64_t>(model.vocab().size()));
  imcap::TrainingState state;
  state.json = R"({"epoch": 3})";
  state.tensors.insert("adam.step", torch::tensor({7}));
  model.save(tmp.file("m.imcap"), &state);

  imcap::TrainingState loaded_state;
  auto loaded = imcap::CaptionModel::load(tmp.file("m.imcap"), torch::kCPU, &loaded_state);
  CHECK(loaded.vocab() == model.vocab());
  CHECK(imcap::model_config_to_json(loaded.config()) ==
        imcap::model_config_to_json(model.config()));
  CHECK(loaded_state.json == state.json);
  CHECK(torch::equal(loaded_state.tensors.at("adam.step"), torch::tensor({7})));
  const auto a = model.decoder()->named_parameters();
  const auto b = loaded.decoder()->named_parameters();
  for (const auto& p : a) CHECK(torch::equal(p.value(), b[p.key()]));
  CHECK(torch::equal(
      model.encoder()->backbone->layer4[1]->as<imcap::BasicBlock>()->bn2->running_var,
      loaded.encoder()->backbone->layer4[1]->as<imcap::BasicBlock>()->bn2->running_var));
  // Same input, same output.
  model.train(false);
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 3, 32, 32});
  CHECK(torch::allclose(model.encoder()->forward(x), loaded.encoder()->forward(x)));
  CHECK(model.eval_transform().options().crop == 32);
}

TEST_CASE("broken model files are rejected with the file name", "[model]") {
  imcap::test::TempDir tmp;
  imcap::CaptionModel model(small_config(), small_vocab());
  model.save(tmp.file("m.imcap"));
  const std::string bytes = imcap::test::read_text(tmp.file("m.imcap"));
  for (int k = 1; k < 16; ++k) {
    const auto cut = tmp.file("cut.imcap");
    imcap::test::write_text(cut, bytes.substr(0, bytes.size() * static_cast<std::size_t>(k) / 16));
    CHECK_THROWS_AS(imcap::CaptionModel::load(cut), imcap::Error);
    CHECK_THROWS_WITH(imcap::CaptionModel::load(cut), Catch::Contains("cut.imcap"));
  }
  // A safetensors file that is not a model.
  imcap::TensorMap plain;
  plain.insert("x", torch::zeros({2}));
  imcap::save_safetensors(tmp.file("plain.safetensors"), plain);
  CHECK_THROWS_WITH(imcap::CaptionModel::load(tmp.file("plain.safetensors")),
                    Catch::Contains("not an imcap model file"));
  // Vocabulary and weights that do not belong together.
  std::map<std::string, std::string> meta;
  auto tensors = imcap::load_safetensors(tmp.file("m.imcap"), &meta);
  auto other = meta;
  other["vocabulary"] =
      imcap::Vocabulary::build_from_captions({"one two three four"}, {1}).to_string();
  imcap::save_safetensors(tmp.file("vocab.imcap"), tensors, other);
  CHECK_THROWS_WITH(imcap::CaptionModel::load(tmp.file("vocab.imcap")),
                    Catch::Contains("the vocabulary has 8 tokens but the decoder was built for"));
  other = meta;
  other["format_version"] = "99";
  imcap::save_safetensors(tmp.file("v99.imcap"), tensors, other);
  CHECK_THROWS_WITH(imcap::CaptionModel::load(tmp.file("v99.imcap")),
                    Catch::Contains("format version '99' is not supported"));
  other = meta;
  auto config = nlohmann::json::parse(meta["config"]);
  config["decoder"]["hidden_size"] = 25;
  other["config"] = config.dump();
  imcap::save_safetensors(tmp.file("arch.imcap"), tensors, other);
  CHECK_THROWS_WITH(imcap::CaptionModel::load(tmp.file("arch.imcap")),
                    Catch::Contains("arch.imcap") && Catch::Contains("lstm"));
  config["encoder"]["arch"] = "resnet7";
  other["config"] = config.dump();
  imcap::save_safetensors(tmp.file("arch7.imcap"), tensors, other);
  CHECK_THROWS_WITH(imcap::CaptionModel::load(tmp.file("arch7.imcap")), Catch::Contains("resnet7"));
  // Values of the wrong JSON type are named, not converted (16.5 to 16, 2^32 + 1 to 1 for an
  // int, 1 to true).
  const auto config_with = [&](const std::string& section, const std::string& key,
                               const nlohmann::json& value) {
    auto c = nlohmann::json::parse(meta["config"]);
    c[section][key] = value;
    auto m = meta;
    m["config"] = c.dump();
    imcap::save_safetensors(tmp.file("typed.imcap"), tensors, m);
    try {
      imcap::CaptionModel::load(tmp.file("typed.imcap"));
    } catch (const imcap::FormatError& e) {
      return std::string(e.what());
    }
    return std::string("loaded");
  };
  const std::string typed = tmp.file("typed.imcap") + ": config: ";
  CHECK_THAT(config_with("image", "crop", 32.5),
             Catch::StartsWith(typed + "image.crop: expected an integer, got 32.5"));
  CHECK_THAT(config_with("encoder", "trainable_stages", std::int64_t{1} << 32 | 1),
             Catch::StartsWith(typed + "encoder.trainable_stages: expected an integer"));
  CHECK_THAT(config_with("encoder", "head_batch_norm", 0),
             Catch::StartsWith(typed + "encoder.head_batch_norm: expected true or false"));
  CHECK_THAT(config_with("decoder", "dropout", "0.1"),
             Catch::StartsWith(typed + "decoder.dropout: expected a number"));
  CHECK_THAT(config_with("image", "mean", {0.5, 0.5}),
             Catch::StartsWith(typed + "image.mean: expected a list of 3 numbers"));
  auto not_object = nlohmann::json::parse(meta["config"]);
  not_object["encoder"] = 5;
  other = meta;
  other["config"] = not_object.dump();
  imcap::save_safetensors(tmp.file("typed.imcap"), tensors, other);
  CHECK_THROWS_WITH(imcap::CaptionModel::load(tmp.file("typed.imcap")),
                    Catch::StartsWith(typed + "'encoder' is number, expected an object"));
}
