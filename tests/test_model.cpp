// CaptionModel and its .imcap file, importing the notebooks' checkpoints, feature extraction.
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

double max_rel_error(const torch::Tensor& got, const torch::Tensor& want) {
  return (got - want).abs().max().item<double>() / want.abs().max().item<double>();
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

TEST_CASE("a notebook model imports and captions exactly like the notebook's sample()",
          "[model][import][python]") {
  imcap::test::TempDir tmp;
  for (const std::string variant : {"embed", "tutorial"}) {
    const auto dir = tmp.file(variant);
    const auto py = imcap::test::run_python("notebook_model.py", {dir, "resnet18", variant});
    REQUIRE(py.exit_code == 0);
    INFO(py.err);
    const auto expected = nlohmann::json::parse(imcap::test::read_text(dir + "/expected.json"));
    const auto cli = imcap::test::run_cli(
        {"import-pytorch", "--encoder", dir + "/encoder-1.pkl", "--decoder", dir + "/decoder-1.pkl",
         "--vocab", dir + "/vocab.pkl", "--encoder-arch", "resnet18", "--embed-size", "32",
         "--hidden-size", "48", "--out", dir + "/model.imcap"});
    INFO(cli.err);
    REQUIRE(cli.exit_code == 0);
    auto model = imcap::CaptionModel::load(dir + "/model.imcap");
    // The notebook's ids: <start>=0, <end>=1, <unk>=2, no <pad>.
    CHECK(model.vocab().start_id() == 0);
    CHECK(model.vocab().end_id() == 1);
    CHECK(model.vocab().unk_id() == 2);
    CHECK_FALSE(model.vocab().pad_id().has_value());
    CHECK(model.config().encoder.head_batch_norm == (variant == "tutorial"));
    CHECK(model.config().decoder.num_layers == (variant == "tutorial" ? 2 : 1));
    const auto images = imcap::load_weights(dir + "/inputs.pt").at("images");
    torch::NoGradGuard no_grad;
    const auto features = model.encoder()->forward(images);
    std::vector<std::vector<float>> want_features = expected["features"];
    for (std::size_t i = 0; i < want_features.size(); ++i)
      CHECK(max_rel_error(features[static_cast<std::int64_t>(i)], torch::tensor(want_features[i])) <
            1e-4);
    const auto ids = model.decoder()->sample(features, /*max_len=*/20);
    for (std::int64_t i = 0; i < 2; ++i) {
      const std::vector<std::int64_t> want = expected["ids"][static_cast<std::size_t>(i)];
      const auto row = ids[i].contiguous();
      CHECK(std::vector<std::int64_t>(row.data_ptr<std::int64_t>(),
                                      row.data_ptr<std::int64_t>() + row.numel()) == want);
    }
    // The trained captions come back (the first predicted token is <start>).
    CHECK(model.vocab().decode(std::vector<std::int64_t>(expected["ids"][0])) ==
          "a dog sleeping on the sofa .");
    CHECK(model.vocab().decode(std::vector<std::int64_t>(expected["ids"][1])) ==
          "a cat running with a red ball on the grass .");
  }
}

TEST_CASE("import-pytorch reports files that do not belong together", "[model][import][python]") {
  imcap::test::TempDir tmp;
  const auto dir = tmp.file("nb");
  REQUIRE(imcap::test::run_python("notebook_model.py", {dir, "resnet18"}).exit_code == 0);
  auto run = [&](std::vector<std::string> extra, const std::string& decoder = "/decoder-1.pkl") {
    std::vector<std::string> args{"import-pytorch",   "--encoder",   dir + "/encoder-1.pkl",
                                  "--decoder",        dir + decoder, "--vocab",
                                  dir + "/vocab.pkl", "--out",       dir + "/m.imcap"};
    args.insert(args.end(), extra.begin(), extra.end());
    return imcap::test::run_cli(args);
  };
  auto r = run({"--encoder-arch", "resnet50"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err,
             Catch::Contains("encoder-1.pkl: embed.weight is [32, 512], but resnet50 gives 2048"));
  r = run({"--encoder-arch", "resnet18", "--hidden-size", "64"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("the hidden size is 48, not 64"));
  r = run({"--encoder-arch", "resnet18"}, "/encoder-1.pkl");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("encoder-1.pkl: missing tensor 'lstm.weight_hh_l0'"));
  CHECK(run({"--encoder-arch", "resnet9"}).exit_code == 2);
  CHECK_FALSE(imcap::detail::path_exists(dir + "/m.imcap"));
}

TEST_CASE("imcap features matches torchvision's eval transform and model",
          "[model][features][python]") {
  imcap::test::TempDir tmp;
  const auto dir = tmp.file("f");
  REQUIRE(imcap::test::run_python("features_reference.py", {dir, "resnet18"}).exit_code == 0);
  const auto r = imcap::test::run_cli(
      {"features", "--annotations", dir + "/ann.json", "--images", dir + "/images", "--encoder",
       "resnet18", "--weights", dir + "/weights.pth", "--out", dir + "/features.safetensors"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto set = imcap::load_features(dir + "/features.safetensors");
  const auto want = imcap::load_weights(dir + "/expected.pt").at("features");
  REQUIRE(set.features.sizes() == want.sizes());
  CHECK(set.image_ids.equal(torch::tensor({10, 11, 12}, torch::kInt64)));
  const double err = max_rel_error(set.features, want);
  INFO("max relative error " << err);
  CHECK(err < 1e-4);
  const auto missing = imcap::test::run_cli({"features", "--annotations", dir + "/ann.json",
                                             "--images", tmp.file("nowhere"), "--encoder",
                                             "resnet18", "--out", dir + "/x.safetensors"});
  CHECK(missing.exit_code == 1);
  CHECK_THAT(missing.err, Catch::Contains("nowhere"));
}
