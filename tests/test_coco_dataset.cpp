// CocoAnnotations validation, statistics, CocoDataset items.
#include "catch.hpp"

#include <cstdio>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/io.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/error.hpp"
#include "support.hpp"

using imcap::CocoAnnotations;
using nlohmann::json;

namespace {

// A small valid annotation file: three images, two captions each, except image 3 (none).
json valid_annotations() {
  return json::parse(R"({
    "info": {}, "licenses": [],
    "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "sub/b.png"},
               {"id": 3, "file_name": "c.png"}],
    "annotations": [
      {"id": 10, "image_id": 1, "caption": "A red square."},
      {"id": 11, "image_id": 1, "caption": "a square that is red"},
      {"id": 12, "image_id": 2, "caption": "A blue circle on grass."},
      {"id": 13, "image_id": 2, "caption": "blue circle"}]})");
}

std::string parse_error(const json& j) {
  try {
    CocoAnnotations::parse(j.dump(), "ann.json");
  } catch (const imcap::FormatError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("valid annotations parse, index by image", "[coco]") {
  const auto a = CocoAnnotations::parse(valid_annotations().dump(), "ann.json");
  CHECK(a.images().size() == 3);
  CHECK(a.captions().size() == 4);
  CHECK(a.image(2).file_name == "sub/b.png");
  CHECK(a.captions_of(1) == std::vector<std::size_t>{0, 1});
  CHECK(a.captions_of(3).empty());
  CHECK_THROWS_AS(a.image(99), imcap::InvalidArgument);
}

TEST_CASE("malformed JSON is reported with the file name", "[coco]") {
  CHECK_THROWS_WITH(CocoAnnotations::parse("{\"images\": [", "ann.json"),
                    Catch::StartsWith("ann.json: not valid JSON"));
  CHECK_THROWS_WITH(CocoAnnotations::parse("[1, 2]", "ann.json"),
                    Catch::Contains("expected a JSON object"));
}

TEST_CASE("missing keys are named with their JSON path", "[coco]") {
  auto j = valid_annotations();
  j.erase("images");
  CHECK_THAT(parse_error(j), Catch::Contains("top level: missing key 'images'"));
  j = valid_annotations();
  j.erase("annotations");
  CHECK_THAT(parse_error(j), Catch::Contains("missing key 'annotations'"));
  j = valid_annotations();
  j["images"][1].erase("file_name");
  CHECK_THAT(parse_error(j), Catch::Contains("ann.json: images[1]: missing key 'file_name'"));
  j = valid_annotations();
  j["annotations"][2].erase("caption");
  CHECK_THAT(parse_error(j), Catch::Contains("annotations[2]: missing key 'caption'"));
}

TEST_CASE("wrongly typed values are named with what was expected", "[coco]") {
  auto j = valid_annotations();
  j["annotations"][3]["caption"] = nullptr;
  CHECK(parse_error(j) == "ann.json: annotations[3].caption: expected a string, got null");
  j = valid_annotations();
  j["images"][0]["id"] = "1";
  CHECK(parse_error(j) == "ann.json: images[0].id: expected an integer, got a string");
  j = valid_annotations();
  j["annotations"][0]["image_id"] = 1.5;
  CHECK_THAT(parse_error(j), Catch::Contains("annotations[0].image_id: expected an integer"));
  j = valid_annotations();
  j["images"] = json::object();
  CHECK(parse_error(j) == "ann.json: images: expected an array, got an object");
}

TEST_CASE("annotations of unknown images are rejected", "[coco]") {
  auto j = valid_annotations();
  j["annotations"][1]["image_id"] = 77;
  CHECK(parse_error(j) == "ann.json: annotations[1].image_id: image 77 is not in 'images'");
}

TEST_CASE("duplicate ids are rejected", "[coco]") {
  auto j = valid_annotations();
  j["images"][2]["id"] = 1;
  CHECK(parse_error(j) == "ann.json: images[2].id: duplicate image id 1 (also images[0])");
  j = valid_annotations();
  j["annotations"][3]["id"] = 10;
  CHECK_THAT(parse_error(j), Catch::Contains("annotations[3].id: duplicate annotation id 10"));
}

TEST_CASE("file names that are absolute or escape the image root are rejected", "[coco]") {
  for (const char* bad : {"/etc/passwd", "../secret.png", "a/../../b.png", "", "a\\..\\b.png"}) {
    auto j = valid_annotations();
    j["images"][0]["file_name"] = bad;
    CHECK_THAT(parse_error(j), Catch::Contains("images[0].file_name") &&
                                   Catch::Contains("relative path inside the image folder"));
  }
}

TEST_CASE("text that is not UTF-8 and NUL in file names are rejected with the JSON path",
          "[coco][utf8]") {
  const std::string images = R"({"images": [{"id": 1, "file_name": "a.jpg"}], )";
  const auto error_of = [](const std::string& text) {
    try {
      CocoAnnotations::parse(text, "ann.json");
    } catch (const imcap::FormatError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // A caption with the bytes FF FE: the vocabulary built from it could not be saved later.
  CHECK_THAT(error_of(images + "\"annotations\": [{\"id\": 1, \"image_id\": 1, "
                               "\"caption\": \"a \xff\xfe dog\"}]}"),
             Catch::StartsWith("ann.json: annotations[0].caption: ill-formed UTF-8 at byte 2") &&
                 Catch::Contains("0xff"));
  // Overlong forms, encoded surrogates and truncated sequences are not UTF-8 either.
  for (const char* bad : {"\xc0\xaf", "\xed\xa0\x80", "\xe2\x82", "\xf4\x90\x80\x80"}) {
    INFO(bad);
    CHECK_THAT(error_of(R"({"images": [{"id": 1, "file_name": ")" + std::string(bad) +
                        R"(.jpg"}], "annotations": []})"),
               Catch::Contains("images[0].file_name: ill-formed UTF-8"));
  }
  // "\u0000" in a file name would cut the path at the NUL: "a\u0000b.jpg" opened "a".
  CHECK_THAT(error_of(R"({"images": [{"id": 1, "file_name": "a\u0000b.jpg"}], "annotations": []})"),
             Catch::Contains("images[0].file_name") &&
                 Catch::Contains(R"('a\u0000b.jpg' contains a NUL)"));
  // Escaped non-ASCII text is fine.
  const auto ok = CocoAnnotations::parse(
      images + R"("annotations": [{"id": 1, "image_id": 1, "caption": "caf\u00e9 \ud83d\udc36"}]})",
      "ann.json");
  CHECK(ok.captions()[0].caption == "café 🐶");
}

TEST_CASE("empty, long and non-ASCII captions are handled", "[coco]") {
  auto j = valid_annotations();
  j["annotations"][0]["caption"] = "";
  j["annotations"][1]["caption"] = std::string(10000, 'a') + " dog";
  j["annotations"][2]["caption"] = "un café 🐶 près du lac";
  const auto a = CocoAnnotations::parse(j.dump(), "ann.json");
  const auto stats = imcap::caption_statistics(a);
  CHECK(stats.length_histogram.at(0) == 1);
  CHECK(imcap::tokenize(a.captions()[2].caption) ==
        std::vector<std::string>{"un", "café", "🐶", "près", "du", "lac"});
}

TEST_CASE("statistics of the bundled COCO sample", "[coco]") {
  const auto a = CocoAnnotations::load(imcap::test::data_path("captions_sample.json"));
  const auto s = imcap::caption_statistics(a, 5);
  CHECK(s.images == 100);
  CHECK(s.captions == 500);
  CHECK(s.images_without_captions == 0);
  std::size_t total = 0;
  for (const auto& [len, n] : s.length_histogram) total += n;
  CHECK(total == 500);
  REQUIRE(s.top_words.size() == 5);
  CHECK(s.top_words[0].first == "a");
  CHECK(s.top_words[0].second >= s.top_words[1].second);
}

TEST_CASE("imcap info prints the statistics, and JSON with --json", "[coco][cli]") {
  const auto path = imcap::test::data_path("captions_sample.json");
  const auto r = imcap::test::run_cli({"info", "--annotations", path, "--json"});
  REQUIRE(r.exit_code == 0);
  const auto j = json::parse(r.out);
  CHECK(j["images"] == 100);
  CHECK(j["captions"] == 500);
  CHECK(j["caption_length_histogram"].is_object());
  CHECK(j["top_words"][0]["word"] == "a");
  const auto plain = imcap::test::run_cli({"info", "--annotations", path});
  CHECK(plain.exit_code == 0);
  CHECK_THAT(plain.out, Catch::Contains("captions: 500"));
  const auto missing = imcap::test::run_cli({"info", "--annotations", "/no/such.json"});
  CHECK(missing.exit_code == 1);
  CHECK_THAT(missing.err, Catch::StartsWith("imcap: error: /no/such.json: cannot open"));
  CHECK(imcap::test::run_cli({"info"}).exit_code == 2);
  CHECK(imcap::test::run_cli({"info", "--annotations", path, "--top", "zero"}).exit_code == 2);
  CHECK(imcap::test::run_cli({"frobnicate"}).exit_code == 2);
  CHECK(imcap::test::run_cli({"info", "--help"}).exit_code == 0);
}

TEST_CASE("imcap vocab writes a vocabulary file", "[vocabulary][cli]") {
  imcap::test::TempDir tmp;
  const auto path = imcap::test::data_path("captions_sample.json");
  const auto r = imcap::test::run_cli(
      {"vocab", "--annotations", path, path, "--threshold", "3", "--out", tmp.file("v.txt")});
  REQUIRE(r.exit_code == 0);
  const auto v = imcap::Vocabulary::load(tmp.file("v.txt"));
  // Both files count: every word seen once in the sample now counts 2 (below 3).
  CHECK(v == imcap::Vocabulary::build({path, path}, {/*threshold=*/3}));
  const auto bad =
      imcap::test::run_cli({"vocab", "--annotations", path, "--out", "/nonexistent-dir/v.txt"});
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.err, Catch::Contains("/nonexistent-dir/v.txt"));
  CHECK(imcap::test::run_cli(
            {"vocab", "--annotations", path, "--threshold", "-1", "--out", tmp.file("w.txt")})
            .exit_code == 2);
}

namespace {

// Writes a dataset folder: images/ with PNGs and ann.json.
void write_dataset(const imcap::test::TempDir& tmp) {
  imcap::detail::create_directories(tmp.file("images/sub"));
  imcap::test::write_pattern_png(tmp.file("images/a.png"), 40, 30, 1);
  imcap::test::write_pattern_png(tmp.file("images/sub/b.png"), 30, 50, 2);
  imcap::test::write_pattern_png(tmp.file("images/c.png"), 32, 32, 3);
  imcap::test::write_text(tmp.file("ann.json"), valid_annotations().dump());
}

}  // namespace

TEST_CASE("CocoDataset yields transformed images and token ids", "[coco]") {
  imcap::test::TempDir tmp;
  write_dataset(tmp);
  const auto vocab = imcap::Vocabulary::build({tmp.file("ann.json")}, {/*threshold=*/1});
  imcap::CocoDataset data(tmp.file("ann.json"), tmp.file("images"), vocab,
                          imcap::ImageTransform::eval(/*resize=*/24, /*crop=*/16));
  CHECK(data.size() == 4);
  CHECK(data.num_images() == 2);  // image 3 has no captions
  std::mt19937_64 rng(1);
  const auto item = data.get(2, rng);
  CHECK(item.image_id == 2);
  CHECK(item.image.sizes() == torch::IntArrayRef{3, 16, 16});
  CHECK(vocab.decode(item.ids) == "a blue circle on grass .");
  CHECK(item.ids.front() == vocab.start_id());
  CHECK(data.references(1) == std::vector<std::string>{"A red square.", "a square that is red"});
  CHECK(data.captions_of_image(2) == std::vector<std::size_t>{2, 3});
  CHECK_THROWS_AS(data.get(4, rng), imcap::InvalidArgument);
}

TEST_CASE("missing image files are listed, or skipped when asked", "[coco]") {
  imcap::test::TempDir tmp;
  write_dataset(tmp);
  std::remove(tmp.file("images/sub/b.png").c_str());
  const auto vocab = imcap::Vocabulary::build({tmp.file("ann.json")}, {/*threshold=*/1});
  CHECK_THROWS_WITH(imcap::CocoDataset(tmp.file("ann.json"), tmp.file("images"), vocab,
                                       imcap::ImageTransform::eval(24, 16)),
                    Catch::Contains("1 image file(s)") && Catch::Contains("sub/b.png"));
  imcap::CocoDatasetOptions options;
  options.skip_missing_images = true;
  imcap::CocoDataset data(tmp.file("ann.json"), tmp.file("images"), vocab,
                          imcap::ImageTransform::eval(24, 16), options);
  CHECK(data.size() == 2);
  CHECK_THROWS_AS(imcap::CocoDataset(tmp.file("ann.json"), tmp.file("nope"), vocab,
                                     imcap::ImageTransform::eval(24, 16)),
                  imcap::IoError);
}

TEST_CASE("the JSON reader decodes escapes and reports syntax errors with a position", "[coco]") {
  const std::string ok =
      R"({"images": [{"id": 1, "file_name": "a\u00e9\/b.png", "extra": [1.5e3, null, true, {"x": "y"}]}],
    "annotations": [{"id": -2, "image_id": 1, "caption": "tab\there \"quoted\" \ud83d\udc36"}]})";
  const auto a = CocoAnnotations::parse(ok, "ok.json");
  CHECK(a.images()[0].file_name == "a\xc3\xa9/b.png");
  CHECK(a.captions()[0].id == -2);
  CHECK(a.captions()[0].caption == "tab\there \"quoted\" \xf0\x9f\x90\xb6");
  auto error_of = [](const std::string& text) {
    try {
      CocoAnnotations::parse(text, "bad.json");
    } catch (const imcap::FormatError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of("{\"images\": [],\n \"annotations\": [,]}") ==
        "bad.json: not valid JSON: line 2, column 18: unexpected character ','");
  CHECK_THAT(error_of(R"({"images": [], "annotations": [],})"), Catch::Contains("trailing comma"));
  CHECK_THAT(error_of(R"({"images": [], "annotations": []} x)"), Catch::Contains("after the end"));
  CHECK_THAT(error_of(R"({"images": [{"id": 1, "file_name": "a\q"}], "annotations": []})"),
             Catch::Contains("bad escape"));
  CHECK_THAT(
      error_of(
          R"({"images": [{"id": 99999999999999999999, "file_name": "a"}], "annotations": []})"),
      Catch::Contains("does not fit in 64 bits"));
  CHECK_THAT(error_of("{\"x\": " + std::string(100000, '[')), Catch::Contains("nested too deeply"));
  CHECK_THAT(
      error_of(R"({"images": [], "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]})"),
      Catch::Contains("image 1 is not in 'images'"));
}
