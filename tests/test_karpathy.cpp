// Karpathy's split file (dataset_coco.json): reading, splits, tokens, clipping, the CLI.
#include "catch.hpp"

#include <fmt/format.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "imcap/coco_dataset.hpp"
#include "imcap/error.hpp"
#include "imcap/features.hpp"
#include "imcap/metrics.hpp"
#include "imcap/model.hpp"
#include "imcap/vocabulary.hpp"
#include "support.hpp"

using imcap::AnnotationOptions;
using imcap::CocoAnnotations;
using nlohmann::json;

namespace {

// One image in Karpathy's field layout (dataset_coco.json as neuraltalk2 and
// self-critical.pytorch read it).
json image(std::int64_t cocoid, std::int64_t imgid, const std::string& split,
           const std::vector<std::pair<std::string, std::vector<std::string>>>& sentences,
           std::int64_t first_sentid) {
  const bool val = split == "val" || split == "test" || split == "restval";
  const std::string folder = val ? "val2014" : "train2014";
  json j = {{"filepath", folder},
            {"filename", fmt::format("COCO_{}_{:012d}.jpg", folder, cocoid)},
            {"imgid", imgid},
            {"split", split},
            {"cocoid", cocoid}};
  json sents = json::array(), ids = json::array();
  for (std::size_t k = 0; k < sentences.size(); ++k) {
    const auto sentid = first_sentid + static_cast<std::int64_t>(k);
    sents.push_back({{"tokens", sentences[k].second},
                     {"raw", sentences[k].first},
                     {"imgid", imgid},
                     {"sentid", sentid}});
    ids.push_back(sentid);
  }
  j["sentences"] = sents;
  j["sentids"] = ids;
  return j;
}

// Five images: two train, one restval, one val, one test. "zebra" is only in the test split,
// "giraffe" only in val.
json karpathy_file() {
  json images = json::array();
  images.push_back(image(391895, 0, "train",
                         {{"A man with a red helmet on a small moped.",
                           {"a", "man", "with", "a", "red", "helmet", "on", "a", "small", "moped"}},
                          {"Man riding a motor bike.", {"man", "riding", "a", "motor", "bike"}}},
                         770337));
  images.push_back(
      image(522418, 1, "train",
            {{"A woman cutting a large cake.", {"a", "woman", "cutting", "a", "large", "cake"}}},
            770400));
  images.push_back(image(
      184613, 2, "restval",
      {{"A child holding a red umbrella.", {"a", "child", "holding", "a", "red", "umbrella"}}},
      770500));
  images.push_back(image(318219, 3, "val",
                         {{"A giraffe near a tree.", {"a", "giraffe", "near", "a", "tree"}}},
                         770600));
  images.push_back(image(554625, 4, "test",
                         {{"A zebra in a field.", {"a", "zebra", "in", "a", "field"}},
                          {"Zebra grazing.", {"zebra", "grazing"}}},
                         770700));
  return {{"images", images}, {"dataset", "coco"}};
}

std::string format_error(const json& j, const std::string& split = {}) {
  try {
    CocoAnnotations::parse(j.dump(), "dataset_coco.json", AnnotationOptions{split});
  } catch (const imcap::FormatError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("Karpathy's file reads with cocoids, file paths, raw captions and tokens",
          "[karpathy][coco]") {
  const auto all = CocoAnnotations::parse(karpathy_file().dump(), "dataset_coco.json");
  CHECK(all.karpathy());
  CHECK(all.images().size() == 5);
  CHECK(all.captions().size() == 7);
  CHECK(all.splits() ==
        std::map<std::string, std::size_t>{{"restval", 1}, {"test", 1}, {"train", 2}, {"val", 1}});
  CHECK(all.image(391895).file_name == "train2014/COCO_train2014_000000391895.jpg");
  const auto& c = all.captions()[all.captions_of(391895)[0]];
  CHECK(c.id == 770337);
  CHECK(c.caption == "A man with a red helmet on a small moped.");
  CHECK(c.tokens.size() == 10);

  const auto train = CocoAnnotations::parse(karpathy_file().dump(), "dataset_coco.json",
                                            AnnotationOptions{"train+restval"});
  CHECK(train.images().size() == 3);
  CHECK(train.captions().size() == 4);
  CHECK(train.has_image(184613));
  CHECK_FALSE(train.has_image(554625));
  CHECK(train.splits() == all.splits());  // the whole file's, for messages and imcap info
  const auto test = CocoAnnotations::parse(karpathy_file().dump(), "dataset_coco.json",
                                           AnnotationOptions{"test"});
  REQUIRE(test.images().size() == 1);
  CHECK(test.images()[0].id == 554625);
  CHECK(test.captions_of(554625).size() == 2);

  // A COCO file is not Karpathy's.
  const auto coco = CocoAnnotations::parse(
      R"({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []})", "c.json");
  CHECK_FALSE(coco.karpathy());
  CHECK(coco.splits().empty());
}

TEST_CASE("Flickr-style Karpathy files without cocoid or filepath use imgid and filename",
          "[karpathy][coco]") {
  json j = karpathy_file();
  for (auto& img : j["images"]) {
    img.erase("cocoid");
    img.erase("filepath");
  }
  const auto a = CocoAnnotations::parse(j.dump(), "dataset_flickr8k.json");
  CHECK(a.karpathy());
  CHECK(a.has_image(4));
  CHECK(a.image(0).file_name == "COCO_train2014_000000391895.jpg");
}

TEST_CASE("bad splits and malformed Karpathy files are named", "[karpathy][coco]") {
  const std::string text = karpathy_file().dump();
  CHECK_THROWS_AS(CocoAnnotations::parse(text, "k.json", AnnotationOptions{"tset"}),
                  imcap::InvalidArgument);
  CHECK_THROWS_WITH(CocoAnnotations::parse(text, "k.json", AnnotationOptions{"train+tset"}),
                    Catch::Contains("k.json: no images in split 'tset'") &&
                        Catch::Contains("restval (1 images)") &&
                        Catch::Contains("train (2 images)"));
  CHECK_THROWS_WITH(CocoAnnotations::parse(text, "k.json", AnnotationOptions{"train+"}),
                    Catch::Contains("expected split names joined by '+'"));
  CHECK_THROWS_WITH(
      CocoAnnotations::parse(R"({"images": [], "annotations": []})", "c.json",
                             AnnotationOptions{"test"}),
      Catch::Contains("c.json: split 'test': this is a COCO captions file, which has no splits"));

  json j = karpathy_file();
  j["images"][1]["sentences"][0].erase("raw");
  CHECK(format_error(j) == "dataset_coco.json: images[1].sentences[0]: missing key 'raw'");
  j = karpathy_file();
  j["images"][2]["sentences"][0]["tokens"][1] = "two words";
  CHECK(format_error(j) ==
        "dataset_coco.json: images[2].sentences[0].tokens[1]: 'two words': expected one word, "
        "without spaces");
  j = karpathy_file();
  j["images"][3]["cocoid"] = 391895;
  CHECK(format_error(j) ==
        "dataset_coco.json: images[3].cocoid: duplicate image id 391895 (also images[0])");
  j = karpathy_file();
  j["images"][4]["sentences"][1]["sentid"] = 770337;
  CHECK(format_error(j) ==
        "dataset_coco.json: images[4].sentences[1].sentid: duplicate sentence "
        "id 770337 (also in images[0])");
  j = karpathy_file();
  j["images"][0]["filepath"] = "../etc";
  CHECK_THAT(format_error(j), Catch::StartsWith("dataset_coco.json: images[0].filepath: "
                                                "'../etc/COCO_train2014_000000391895.jpg' must be "
                                                "a relative path"));
  j = karpathy_file();
  j["images"][0].erase("split");
  CHECK(format_error(j) == "dataset_coco.json: images[0]: missing key 'split'");
  j = karpathy_file();
  j["images"][0]["cocoid"] = "391895";
  CHECK(format_error(j) ==
        "dataset_coco.json: images[0].cocoid: expected an integer, got a string");
  // Errors in images of other splits are still errors: the file is broken.
  j = karpathy_file();
  j["images"][4]["sentences"][0]["raw"] = nullptr;
  CHECK(format_error(j, "train") ==
        "dataset_coco.json: images[4].sentences[0].raw: expected a string, got null");
}

TEST_CASE("the vocabulary counts the split's own tokens; captions clip to a length",
          "[karpathy][vocab]") {
  const auto train = CocoAnnotations::parse(karpathy_file().dump(), "dataset_coco.json",
                                            AnnotationOptions{"train+restval"});
  imcap::VocabularyOptions vo;
  vo.threshold = 1;
  const auto vocab = imcap::Vocabulary::build(train, vo);
  CHECK(vocab.contains("moped"));
  CHECK(vocab.contains("umbrella"));       // restval
  CHECK_FALSE(vocab.contains("zebra"));    // test only
  CHECK_FALSE(vocab.contains("giraffe"));  // val only
  CHECK_FALSE(vocab.contains("."));        // the raw text's period is not one of the tokens
  CHECK(vocab.count(vocab.id("a")) == 8);

  imcap::CocoDatasetOptions d;
  d.features = torch::zeros({3, 4});
  d.feature_image_ids = torch::tensor({391895, 522418, 184613}, torch::kLong);
  const imcap::CocoDataset whole(train, "", vocab, imcap::ImageTransform::eval(8, 8), d);
  const auto& first = whole.caption_ids(whole.captions_of_image(391895)[0]);
  CHECK(vocab.decode(first) == "a man with a red helmet on a small moped");
  CHECK(first.size() == 12);
  d.clip_caption_tokens = 6;
  const imcap::CocoDataset clipped(train, "", vocab, imcap::ImageTransform::eval(8, 8), d);
  CHECK(clipped.size() == whole.size());
  const auto& cut = clipped.caption_ids(clipped.captions_of_image(391895)[0]);
  CHECK(vocab.decode(cut) == "a man with a red helmet");
  CHECK(cut.size() == 8);
  CHECK(cut.back() == vocab.end_id());
  // Captions up to the length stay whole.
  const auto& six = clipped.caption_ids(clipped.captions_of_image(184613)[0]);
  CHECK(vocab.decode(six) == "a child holding a red umbrella");
  const auto& five = clipped.caption_ids(clipped.captions_of_image(391895)[1]);
  CHECK(vocab.decode(five) == "man riding a motor bike");
}

TEST_CASE("imcap train, vocab, info and eval read Karpathy's splits", "[karpathy][cli]") {
  imcap::test::TempDir t;
  const std::string k = t.file("dataset_coco.json");
  imcap::test::write_text(k, karpathy_file().dump());
  imcap::FeatureSet set;
  torch::manual_seed(3);
  set.features = torch::rand({5, 512});
  set.image_ids = torch::tensor({391895, 522418, 184613, 318219, 554625}, torch::kLong);
  const std::string f = t.file("features.safetensors");
  imcap::save_features(f, set);

  // No split: refused, naming the splits, so that nothing trains on the test images by omission.
  auto r = imcap::test::run_cli(
      {"train", "--annotations", k, "--features", f, "--out", t.file("r0"), "--max-steps", "1"});
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains(k + " is a Karpathy split file: choose its images with "
                                        "--split") &&
                        Catch::Contains("test (1 images)"));
  r = imcap::test::run_cli({"train", "--annotations", k, "--split", "train+restval", "--features",
                            f, "--val-annotations", k, "--val-features", f, "--out", t.file("r1"),
                            "--max-steps", "1"});
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains("choose its images with --val-split"));
  r = imcap::test::run_cli({"train", "--annotations", k, "--split", "trian", "--features", f,
                            "--out", t.file("r2"), "--max-steps", "1"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("no images in split 'trian'"));

  r = imcap::test::run_cli({"train",
                            "--annotations",
                            k,
                            "--split",
                            "train+restval",
                            "--features",
                            f,
                            "--val-annotations",
                            k,
                            "--val-split",
                            "val",
                            "--val-features",
                            f,
                            "--out",
                            t.file("run"),
                            "--encoder",
                            "resnet18",
                            "--embed-size",
                            "8",
                            "--hidden-size",
                            "8",
                            "--batch-size",
                            "2",
                            "--max-steps",
                            "2",
                            "--vocab-threshold",
                            "1",
                            "--clip-captions",
                            "16",
                            "--threads",
                            "1"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("4 captions of 3 images"));
  const auto model = imcap::CaptionModel::load(t.file("run/last.imcap"));
  CHECK(model.vocab().contains("umbrella"));
  CHECK_FALSE(model.vocab().contains("zebra"));
  CHECK_FALSE(model.vocab().contains("giraffe"));

  r = imcap::test::run_cli({"vocab", "--annotations", k, "--out", t.file("v.txt")});
  CHECK(r.exit_code == 2);
  r = imcap::test::run_cli({"vocab", "--annotations", k, "--split", "train", "--threshold", "1",
                            "--out", t.file("v.txt")});
  REQUIRE(r.exit_code == 0);
  const auto vocab = imcap::Vocabulary::load(t.file("v.txt"));
  CHECK(vocab.contains("moped"));
  CHECK_FALSE(vocab.contains("umbrella"));

  r = imcap::test::run_cli({"info", "--annotations", k, "--json"});
  REQUIRE(r.exit_code == 0);
  const auto info = json::parse(r.out);
  CHECK(info["images"] == 5);
  CHECK(info["splits"]["restval"] == 1);
  CHECK(info["splits"]["train"] == 2);

  // Results keyed by cocoid, scored against the test split's raw references.
  const std::string results = t.file("results.json");
  imcap::test::write_text(results, R"([{"image_id": 554625, "caption": "a zebra in a field"}])");
  r = imcap::test::run_cli(
      {"eval", "--annotations", k, "--split", "test", "--results", results, "--json"});
  REQUIRE(r.exit_code == 0);
  CHECK(json::parse(r.out)["images"] == 1);
  CHECK(json::parse(r.out)["references"] == 2);
  r = imcap::test::run_cli(
      {"eval", "--annotations", k, "--split", "val", "--results", results, "--json"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("image_id 554625 is not an image of"));
}
