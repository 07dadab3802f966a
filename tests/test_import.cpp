// Importing the notebooks' checkpoints (imcap import-pytorch, import_notebook_model) and
// sgrvinod's Show, Attend and Tell checkpoints of whole pickled modules (import_show_attend_tell).
#include "catch.hpp"

#include <fstream>
#include <optional>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/io.hpp"
#include "imcap/attention_decoder.hpp"
#include "imcap/checkpoint.hpp"
#include "imcap/decoder.hpp"
#include "imcap/error.hpp"
#include "imcap/features.hpp"
#include "imcap/import.hpp"
#include "imcap/model.hpp"
#include "imcap/search.hpp"
#include "imcap/weights.hpp"
#include "support.hpp"

namespace {

double max_rel_error(const torch::Tensor& got, const torch::Tensor& want) {
  return (got - want).abs().max().item<double>() / want.abs().max().item<double>();
}

}  // namespace

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
    const auto ids =
        imcap::greedy_ids(imcap::DecoderStepper(model.decoder()), features, /*max_length=*/20);
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

TEST_CASE("a Show, Attend and Tell checkpoint of whole pickled modules imports and captions alike",
          "[model][import][attention][python]") {
  imcap::test::TempDir tmp;
  const auto dir = tmp.file("sat");
  const auto py = imcap::test::run_python("show_attend_tell_checkpoint.py", {dir, "3"});
  INFO(py.err);
  REQUIRE(py.exit_code == 0);
  const auto expected = imcap::load_weights(dir + "/expected.pt");
  const auto ids_json = nlohmann::json::parse(imcap::test::read_text(dir + "/expected.json"));
  for (const char* file : {"checkpoint.pth.tar", "checkpoint-legacy.pth.tar"}) {
    INFO(file);
    const std::string out = dir + "/" + file + ".imcap";
    const auto cli = imcap::test::run_cli({"import-pytorch", "--checkpoint", dir + "/" + file,
                                           "--word-map", dir + "/WORDMAP.json", "--grid", "3",
                                           "--image-size", "64", "--out", out});
    INFO(cli.out << cli.err);
    REQUIRE(cli.exit_code == 0);
    CHECK_THAT(cli.out, Catch::Contains("resnet18 encoder, 3x3 grid") &&
                            Catch::Contains("E 16, H 32, A 24"));
    auto model = imcap::CaptionModel::load(out);
    REQUIRE(model.decoder_kind() == imcap::DecoderKind::kAttention);
    CHECK(model.vocab().pad_id() == std::optional<std::int64_t>(0));
    CHECK(model.vocab().start_id() == 12);
    torch::NoGradGuard no_grad;
    const auto grid = model.encoder()->forward_spatial(expected.at("images"), 3);
    const auto got =
        model.attention_decoder()->forward(grid, expected.at("captions"), expected.at("lengths"));
    const auto valid = imcap::length_mask(expected.at("lengths") - 1, got.logits.size(1));
    CHECK(max_rel_error(got.logits.index({valid}), expected.at("logits").index({valid})) < 1e-4);
    CHECK((got.alphas.index({valid}) - expected.at("alphas").index({valid}))
              .abs()
              .max()
              .item<double>() < 1e-5);
    const auto ids =
        imcap::greedy_ids(imcap::AttentionStepper(model.attention_decoder()), grid, 12);
    for (std::int64_t i = 0; i < 2; ++i) {
      const std::vector<std::int64_t> want = ids_json["ids"][static_cast<std::size_t>(i)];
      const auto row = ids[i].contiguous();
      CHECK(std::vector<std::int64_t>(row.data_ptr<std::int64_t>(),
                                      row.data_ptr<std::int64_t>() + row.numel()) == want);
    }
  }
  // A word map that does not fit the decoder, a missing key, mixed or missing options.
  imcap::test::write_text(dir + "/small.json",
                          R"({"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3})");
  auto r = imcap::test::run_cli({"import-pytorch", "--checkpoint", dir + "/checkpoint.pth.tar",
                                 "--word-map", dir + "/small.json", "--out", dir + "/x.imcap"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("small.json") && Catch::Contains("4 words") &&
                        Catch::Contains("embeds 14"));
  CHECK_THROWS_WITH(imcap::import_show_attend_tell(dir + "/expected.pt", dir + "/WORDMAP.json"),
                    Catch::Contains("no key 'encoder'"));
  CHECK(imcap::test::run_cli({"import-pytorch", "--checkpoint", dir + "/checkpoint.pth.tar",
                              "--out", dir + "/x.imcap"})
            .exit_code == 2);
  CHECK(imcap::test::run_cli({"import-pytorch", "--checkpoint", dir + "/checkpoint.pth.tar",
                              "--word-map", dir + "/WORDMAP.json", "--vocab", "v.pkl", "--out",
                              dir + "/x.imcap"})
            .exit_code == 2);
  CHECK_FALSE(imcap::detail::path_exists(dir + "/x.imcap"));
}
