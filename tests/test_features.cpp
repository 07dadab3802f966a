// Feature caching: training the decoder and the embedding head on pooled CNN features computed
// once by `imcap features`, instead of running the frozen CNN every epoch; and an attention
// decoder on the CNN's grids (`imcap features --spatial`, 16-bit).
#include "catch.hpp"

#include <cmath>

#include <torch/torch.h>

#include "detail/io.hpp"
#include "imcap/checkpoint.hpp"
#include "imcap/encoder.hpp"
#include "imcap/error.hpp"
#include "imcap/features.hpp"
#include "imcap/image.hpp"
#include "imcap/import.hpp"
#include "imcap/model.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/trainer.hpp"
#include "imcap/weights.hpp"
#include "support.hpp"
#include "tiny.hpp"

namespace {

struct Data : imcap::test::TinyDataset {
  // A frozen ResNet-18 at 32 px: resize == crop, so the training transform (no flip) and the
  // evaluation transform that `imcap features` uses see the same pixels.
  imcap::CaptionModel model(int trainable_stages = 0) const {
    imcap::test::TinyConfig t;
    t.head_batch_norm = true;
    t.trainable_stages = trainable_stages;
    return imcap::test::tiny_model(*vocab, 9, t);
  }

  imcap::TrainerOptions options(const std::string& out) const {
    return imcap::test::tiny_trainer_options(tmp.file(out));
  }

  // Features of every image of a split, through a file as `imcap features` writes it.
  imcap::FeatureSet features(imcap::CaptionModel& m, const std::string& annotations,
                             const std::string& images, const std::string& name) const {
    imcap::FeatureOptions fo;
    fo.crop = 32;
    fo.resize = 32;
    fo.batch_size = 7;
    fo.workers = 1;
    imcap::save_features(
        tmp.file(name),
        imcap::extract_features(m.encoder()->backbone, imcap::CocoAnnotations::load(annotations),
                                images, fo));
    return imcap::load_features(tmp.file(name));
  }
};

imcap::CocoDatasetOptions with_features(const imcap::FeatureSet& set) {
  imcap::CocoDatasetOptions o;
  o.features = set.features;
  o.feature_image_ids = set.image_ids;
  return o;
}

double max_rel_error(const torch::Tensor& got, const torch::Tensor& want) {
  return (got - want).abs().max().item<double>() / want.abs().max().item<double>();
}

}  // namespace

TEST_CASE("training on cached features equals training with the frozen CNN", "[features]") {
  Data d;
  const auto& f = d.files;
  auto with_cnn = d.model();
  imcap::TransformOptions tf = with_cnn.eval_transform().options();
  tf.train = true;
  tf.flip_probability = 0.0;
  const imcap::ImageTransform train_tf(tf);
  imcap::CocoDataset train(f.train_annotations, f.train_images, *d.vocab, train_tf);
  imcap::CocoDataset val(f.val_annotations, f.val_images, *d.vocab, with_cnn.eval_transform());
  const auto a = imcap::Trainer(with_cnn, train, &val, d.options("cnn")).fit();

  auto cached = d.model();
  const auto cnn_before =
      cached.encoder()->backbone->named_parameters()["layer4.1.conv2.weight"].clone();
  const auto train_set = d.features(cached, f.train_annotations, f.train_images, "train.st");
  const auto val_set = d.features(cached, f.val_annotations, f.val_images, "val.st");
  CHECK(train_set.features.size(1) == 512);
  // No image folder is needed once the features exist.
  imcap::CocoDataset train_f(f.train_annotations, "", *d.vocab, train_tf, with_features(train_set));
  imcap::CocoDataset val_f(f.val_annotations, "", *d.vocab, cached.eval_transform(),
                           with_features(val_set));
  CHECK(train_f.has_features());
  std::mt19937_64 rng(0);
  CHECK(train_f.image(train_f.image_ids().front(), rng).sizes() == torch::IntArrayRef({512}));
  const auto b = imcap::Trainer(cached, train_f, &val_f, d.options("cached")).fit();

  REQUIRE(a.losses.size() == b.losses.size());
  REQUIRE(a.losses.size() >= 4);
  for (std::size_t i = 0; i < a.losses.size(); ++i) {
    INFO("step " << i);
    CHECK(std::abs(a.losses[i] - b.losses[i]) < 1e-4 * std::abs(a.losses[i]));
  }
  CHECK(a.losses.back() < a.losses.front());
  CHECK(std::abs(a.last_validation.loss - b.last_validation.loss) < 1e-4 * a.last_validation.loss);
  CHECK(a.last_validation.bleu4 == Approx(b.last_validation.bleu4));
  // The CNN did not move, the head and the decoder did.
  CHECK(torch::equal(cached.encoder()->backbone->named_parameters()["layer4.1.conv2.weight"],
                     cnn_before));
  CHECK(imcap::detail::path_exists(d.tmp.file("cached/last.imcap")));
}

TEST_CASE("cached features are checked against the annotations and the model", "[features]") {
  Data d;
  const auto& f = d.files;
  auto m = d.model();
  const auto set = d.features(m, f.train_annotations, f.train_images, "train.st");
  const imcap::ImageTransform tf = m.eval_transform();
  // An image without a row of features is missing, like a missing file.
  imcap::FeatureSet partial{set.features.slice(0, 0, 1), set.image_ids.slice(0, 0, 1)};
  CHECK_THROWS_WITH(
      imcap::CocoDataset(f.train_annotations, "", *d.vocab, tf, with_features(partial)),
      Catch::Contains("have no features") && Catch::Contains("captions_train.json"));
  auto skip = with_features(partial);
  skip.skip_missing_images = true;
  imcap::CocoDataset some(f.train_annotations, "", *d.vocab, tf, skip);
  CHECK(some.num_images() == 1);
  // Row counts that disagree.
  auto bad = with_features(set);
  bad.feature_image_ids = set.image_ids.slice(0, 0, 3);
  CHECK_THROWS_AS(imcap::CocoDataset(f.train_annotations, "", *d.vocab, tf, bad),
                  imcap::InvalidArgument);
  // Features of another width than the model's CNN, or a CNN that would train.
  imcap::CocoDataset narrow(f.train_annotations, "", *d.vocab, tf,
                            with_features({set.features.slice(1, 0, 100), set.image_ids}));
  CHECK_THROWS_WITH(imcap::Trainer(m, narrow, nullptr, d.options("narrow")),
                    Catch::Contains("100 values per image") && Catch::Contains("512"));
  auto trainable = d.model(/*trainable_stages=*/1);
  imcap::CocoDataset full(f.train_annotations, "", *d.vocab, tf, with_features(set));
  CHECK_THROWS_WITH(imcap::Trainer(trainable, full, nullptr, d.options("t")),
                    Catch::Contains("frozen CNN"));
}

TEST_CASE("imcap train --features trains from imcap features output", "[features][cli]") {
  Data d;
  const auto& f = d.files;
  auto r = imcap::test::run_cli({"features", "--annotations", f.train_annotations, "--images",
                                 f.train_images, "--encoder", "resnet18", "--image-size", "32",
                                 "--threads", "1", "--out", d.tmp.file("train.safetensors")});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const std::vector<std::string> common = imcap::test::with_tiny_flags(
      {"train", "--annotations", f.train_annotations, "--features", d.tmp.file("train.safetensors"),
       "--max-steps", "3", "--batch-size", "20", "--threads", "1"});
  auto args = common;
  args.insert(args.end(), {"--encoder", "resnet18", "--out", d.tmp.file("run")});
  r = imcap::test::run_cli(args);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.err, Catch::Contains("--features without --weights"));
  CHECK(imcap::detail::path_exists(d.tmp.file("run/last.imcap")));
  // ResNet-50 features are 2048 wide: the ResNet-18 cache does not fit.
  args = common;
  args.insert(args.end(), {"--encoder", "resnet50", "--out", d.tmp.file("run50")});
  r = imcap::test::run_cli(args);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("512 values per image"));
  // Neither images nor features: bad usage.
  CHECK(imcap::test::run_cli(
            {"train", "--annotations", f.train_annotations, "--out", d.tmp.file("x")})
            .exit_code == 2);
}

TEST_CASE("imcap features computes in bfloat16 on request and saves float32", "[features][cli]") {
  Data d;
  const auto& f = d.files;
  auto features = [&](const std::vector<std::string>& extra, const std::string& out) {
    std::vector<std::string> args = {
        "features",  "--annotations", f.train_annotations, "--images", f.train_images,
        "--encoder", "resnet18",      "--image-size",      "32",       "--threads",
        "1",         "--out",         d.tmp.file(out)};
    args.insert(args.end(), extra.begin(), extra.end());
    return imcap::test::run_cli(args);
  };
  auto r = features({}, "f32.safetensors");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  r = features({"--encoder-dtype", "float32"}, "f32b.safetensors");
  REQUIRE(r.exit_code == 0);
  // Without --weights the initial weights come from --seed (default 0): the same features.
  CHECK(torch::equal(imcap::load_features(d.tmp.file("f32b.safetensors")).features,
                     imcap::load_features(d.tmp.file("f32.safetensors")).features));
  r = features({"--encoder-dtype", "bfloat16", "--device", "cpu"}, "bf16.safetensors");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto f32 = imcap::load_features(d.tmp.file("f32.safetensors")).features;
  const auto bf16 = imcap::load_features(d.tmp.file("bf16.safetensors")).features;
  CHECK(bf16.scalar_type() == torch::kFloat);
  REQUIRE(bf16.sizes() == f32.sizes());
  const double err = ((bf16 - f32).abs().max() / f32.abs().max()).item<double>();
  CHECK(err > 1e-4);  // really computed in bfloat16
  CHECK(err < 0.15);
  // Bad values: usage errors (exit 2); a missing GPU: bad input (exit 1).
  CHECK(features({"--encoder-dtype", "float64"}, "x.safetensors").exit_code == 2);
  if (!torch::cuda::is_available()) {
    r = features({"--device", "cuda"}, "x.safetensors");
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("no CUDA device"));
    r = features({"--encoder-dtype", "float16"}, "x.safetensors");
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("float16 needs a CUDA device") &&
                          Catch::Contains("bfloat16") && !Catch::Contains("slow_conv2d"));
  }
}

TEST_CASE("feature files with a wrong dtype or non-finite values are refused naming the problem",
          "[features][robustness]") {
  imcap::test::TempDir tmp;
  const auto ids = torch::tensor(std::vector<std::int64_t>{5, 6, 7});
  const auto write = [&](const std::string& name, const torch::Tensor& features) {
    imcap::TensorMap t;
    t.insert("features", features);
    t.insert("image_ids", ids);
    imcap::save_safetensors(tmp.file(name), t);
    return tmp.file(name);
  };
  const auto bools = write("bool.st", torch::ones({3, 4}, torch::kBool));
  CHECK_THROWS_WITH(imcap::load_features(bools), Catch::Contains("bool.st") &&
                                                     Catch::Contains("dtype Bool") &&
                                                     !Catch::Contains("dims"));
  CHECK_THROWS_WITH(imcap::load_features(write("int.st", torch::ones({3, 4}, torch::kInt))),
                    Catch::Contains("dtype Int"));
  CHECK_THROWS_WITH(imcap::load_features(write("flat.st", torch::ones({12}))),
                    Catch::Contains("[N, C]") && Catch::Contains("[12]"));

  auto nan = torch::ones({3, 4});
  nan[1][2] = std::nanf("");
  CHECK_THROWS_WITH(imcap::load_features(write("nan.st", nan)),
                    Catch::Contains("nan.st") && Catch::Contains("row 1 (image id 6)") &&
                        Catch::Contains("column 2"));
  auto inf = torch::ones({3, 4}, torch::kHalf);
  inf[2][0] = -INFINITY;
  CHECK_THROWS_WITH(imcap::load_features(write("inf.st", inf)),
                    Catch::Contains("row 2 (image id 7)") && Catch::Contains("-inf"));
  CHECK(imcap::load_features(write("ok.st", torch::ones({3, 4}))).features.size(0) == 3);

  // The library path: features handed to a CocoDataset directly.
  Data d;
  imcap::CocoDatasetOptions o;
  o.features = nan;
  o.feature_image_ids = ids;
  CHECK_THROWS_WITH(
      imcap::CocoDataset(d.files.train_annotations, "", *d.vocab, imcap::ImageTransform{}, o),
      Catch::Contains("row 1") && Catch::Contains("finite"));
  o.features = torch::ones({3, 4}, torch::kBool);
  CHECK_THROWS_WITH(
      imcap::CocoDataset(d.files.train_annotations, "", *d.vocab, imcap::ImageTransform{}, o),
      Catch::Contains("dtype Bool"));
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

namespace {

// An attention model over tiny_config's frozen ResNet-18 at 64 px: a 2 x 2 grid, P = 4.
imcap::CaptionModel tiny_attention_model(const imcap::Vocabulary& vocab) {
  torch::manual_seed(4);
  return imcap::CaptionModel(imcap::test::tiny_attention_config(), vocab);
}

}  // namespace

TEST_CASE("spatial features: grids in 16 bits, and training on them equals training on images",
          "[features][attention]") {
  Data d;
  const auto& f = d.files;
  auto with_cnn = tiny_attention_model(*d.vocab);
  imcap::FeatureOptions fo;
  fo.crop = fo.resize = 64;
  fo.batch_size = 5;
  fo.workers = 1;
  fo.spatial = true;
  const auto annotations = imcap::CocoAnnotations::load(f.train_annotations);
  // float16 by default: the grid of each image, as the encoder gives it, rounded.
  const auto half =
      imcap::extract_features(with_cnn.encoder()->backbone, annotations, f.train_images, fo);
  REQUIRE(half.spatial());
  CHECK(half.features.scalar_type() == torch::kHalf);
  const auto images = static_cast<std::int64_t>(annotations.images().size());
  REQUIRE(half.features.sizes() == torch::IntArrayRef({images, 4, 512}));
  {
    torch::NoGradGuard no_grad;
    with_cnn.train(false);
    const auto& first = annotations.images().front();
    const torch::Tensor x =
        with_cnn.eval_transform()(imcap::decode_image(f.train_images + "/" + first.file_name));
    const torch::Tensor want = with_cnn.encoder()->forward_spatial(x.unsqueeze(0))[0];
    CHECK(max_rel_error(half.features[0].to(torch::kFloat), want) < 2e-3);
  }
  imcap::save_features(d.tmp.file("half.st"), half);
  const auto back = imcap::load_features(d.tmp.file("half.st"));
  CHECK(back.features.scalar_type() == torch::kHalf);
  CHECK(torch::equal(back.features, half.features));
  CHECK(torch::equal(back.image_ids, half.image_ids));
  // A 1 x 1 pool, and bfloat16.
  fo.grid = 1;
  fo.spatial_dtype = torch::kBFloat16;
  const auto pooled =
      imcap::extract_features(with_cnn.encoder()->backbone, annotations, f.train_images, fo);
  CHECK(pooled.features.scalar_type() == torch::kBFloat16);
  CHECK(pooled.features.size(1) == 1);
  CHECK(max_rel_error(pooled.features.select(1, 0).to(torch::kFloat),
                      half.features.to(torch::kFloat).mean(1)) < 1e-2);
  fo.grid = -1;
  CHECK_THROWS_AS(
      imcap::extract_features(with_cnn.encoder()->backbone, annotations, f.train_images, fo),
      imcap::InvalidArgument);

  // Training on float32 grids is training with the frozen CNN; on float16 ones, nearly.
  imcap::TransformOptions tf = with_cnn.eval_transform().options();
  tf.train = true;
  tf.flip_probability = 0.0;
  const imcap::ImageTransform train_tf(tf);
  imcap::CocoDataset train(f.train_annotations, f.train_images, *d.vocab, train_tf);
  const auto a = imcap::Trainer(with_cnn, train, nullptr, d.options("cnn")).fit();
  fo.grid = 0;
  fo.spatial_dtype = torch::kFloat;
  auto cached = tiny_attention_model(*d.vocab);
  const auto full =
      imcap::extract_features(cached.encoder()->backbone, annotations, f.train_images, fo);
  imcap::CocoDataset train_f(f.train_annotations, "", *d.vocab, train_tf, with_features(full));
  std::mt19937_64 rng(0);
  CHECK(train_f.image(train_f.image_ids().front(), rng).sizes() == torch::IntArrayRef({4, 512}));
  const auto b = imcap::Trainer(cached, train_f, nullptr, d.options("cached")).fit();
  auto cached_half = tiny_attention_model(*d.vocab);
  imcap::CocoDataset train_h(f.train_annotations, "", *d.vocab, train_tf, with_features(half));
  const auto c = imcap::Trainer(cached_half, train_h, nullptr, d.options("half")).fit();
  REQUIRE(a.losses.size() >= 4);
  REQUIRE(a.losses.size() == b.losses.size());
  REQUIRE(a.losses.size() == c.losses.size());
  for (std::size_t i = 0; i < a.losses.size(); ++i) {
    INFO("step " << i);
    CHECK(std::abs(a.losses[i] - b.losses[i]) < 1e-4 * std::abs(a.losses[i]));
    CHECK(std::abs(a.losses[i] - c.losses[i]) < 1e-2 * std::abs(a.losses[i]));
  }
  CHECK(a.losses.back() < a.losses.front());
  // A Show and Tell model refuses grids; an attention model refuses pooled vectors.
  auto show_tell = d.model();
  CHECK_THROWS_WITH(imcap::Trainer(show_tell, train_h, nullptr, d.options("st")),
                    Catch::Contains("grids") && Catch::Contains("pooled"));
  const auto vectors = d.features(show_tell, f.train_annotations, f.train_images, "pooled.st");
  imcap::CocoDataset train_p(f.train_annotations, "", *d.vocab, train_tf, with_features(vectors));
  CHECK_THROWS_WITH(imcap::Trainer(cached, train_p, nullptr, d.options("att")),
                    Catch::Contains("imcap features --spatial"));
}

TEST_CASE("imcap features --spatial, then imcap train --decoder attention --features",
          "[features][attention][cli]") {
  Data d;
  const auto& f = d.files;
  const std::string cache = d.tmp.file("grids.safetensors");
  auto r = imcap::test::run_cli({"features", "--annotations", f.train_annotations, "--images",
                                 f.train_images, "--encoder", "resnet18", "--image-size", "64",
                                 "--spatial", "--threads", "1", "--out", cache});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("4 positions x 512 features, float16"));
  CHECK(imcap::load_features(cache).features.scalar_type() == torch::kHalf);
  auto train = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"train",
                                     "--annotations",
                                     f.train_annotations,
                                     "--features",
                                     cache,
                                     "--encoder",
                                     "resnet18",
                                     "--max-steps",
                                     "2",
                                     "--batch-size",
                                     "10",
                                     "--threads",
                                     "1",
                                     "--vocab-threshold",
                                     "1",
                                     "--out",
                                     d.tmp.file("run")};
    args.insert(args.end(), extra.begin(), extra.end());
    return imcap::test::run_cli(args);
  };
  r = train({"--decoder", "attention", "--image-size", "64", "--attention-dim", "8", "--embed-size",
             "12", "--hidden-size", "16"});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  CHECK(imcap::detail::path_exists(d.tmp.file("run/last.imcap")));
  // Grids for a Show and Tell model, or grids of another size than the model's.
  r = train({"--image-size", "64"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err,
             Catch::Contains("spatial (grid) features") && Catch::Contains("'show-tell' decoder"));
  r = train({"--decoder", "attention", "--image-size", "64", "--grid", "1"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("grids of 4 positions") && Catch::Contains("1x1 = 1"));
  r = train({"--decoder", "attention", "--image-size", "128"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("4x4 = 16"));
  // --grid and --dtype belong to --spatial; --dtype takes three names.
  CHECK(imcap::test::run_cli({"features", "--annotations", f.train_annotations, "--images",
                              f.train_images, "--grid", "2", "--out", d.tmp.file("x")})
            .exit_code == 2);
  CHECK(imcap::test::run_cli({"features", "--annotations", f.train_annotations, "--images",
                              f.train_images, "--spatial", "--dtype", "int8", "--out",
                              d.tmp.file("x")})
            .exit_code == 2);
}
