// The synthetic shapes dataset.
#include "catch.hpp"

#include <algorithm>
#include <set>

#include "imcap/coco_dataset.hpp"
#include "imcap/error.hpp"
#include "imcap/image.hpp"
#include "imcap/synthetic.hpp"
#include "support.hpp"

TEST_CASE("scenes are deterministic and their captions name their shapes", "[synthetic]") {
  imcap::SyntheticScene a, b, c;
  const auto pa = imcap::render_synthetic_scene(42, 48, 3, a);
  const auto pb = imcap::render_synthetic_scene(42, 48, 3, b);
  const auto pc = imcap::render_synthetic_scene(43, 48, 3, c);
  CHECK(pa == pb);
  CHECK(pa != pc);
  CHECK(pa.size() == 48u * 48u * 3u);
  REQUIRE(a.captions.size() == 5);
  CHECK(std::set<std::string>(a.captions.begin(), a.captions.end()).size() == 5);
  REQUIRE(!a.shapes.empty());
  for (const auto& caption : a.captions)
    for (const auto& s : a.shapes) {
      CHECK_THAT(caption, Catch::Contains(s.color + " " + s.kind));
      CHECK_THAT(caption, Catch::Contains(s.size));
    }
}

TEST_CASE("generate_synthetic_dataset writes a valid COCO dataset", "[synthetic]") {
  imcap::test::TempDir tmp;
  imcap::SyntheticOptions o;
  o.train_images = 6;
  o.val_images = 2;
  o.image_size = 32;
  const auto files = imcap::generate_synthetic_dataset(tmp.file("shapes"), o);
  const auto train = imcap::CocoAnnotations::load(files.train_annotations);
  const auto val = imcap::CocoAnnotations::load(files.val_annotations);
  CHECK(train.images().size() == 6);
  CHECK(train.captions().size() == 30);
  CHECK(val.images().size() == 2);
  for (const auto& img : val.images()) CHECK_FALSE(train.has_image(img.id));
  const auto image = imcap::decode_image(files.train_images + "/" + train.images()[0].file_name);
  CHECK(image.width == 32);
  CHECK(image.height == 32);
  // Same seed, same files.
  imcap::generate_synthetic_dataset(tmp.file("again"), o);
  CHECK(imcap::test::read_text(files.train_annotations) ==
        imcap::test::read_text(tmp.file("again/captions_train.json")));
  CHECK(imcap::test::read_text(files.train_images + "/000001.jpg") ==
        imcap::test::read_text(tmp.file("again/train/000001.jpg")));
  o.image_size = 8;
  CHECK_THROWS_AS(imcap::generate_synthetic_dataset(tmp.file("bad"), o), imcap::InvalidArgument);
}

TEST_CASE("imcap synth", "[synthetic][cli]") {
  imcap::test::TempDir tmp;
  const auto r = imcap::test::run_cli(
      {"synth", "--out", tmp.file("d"), "--train", "3", "--val", "1", "--size", "24"});
  REQUIRE(r.exit_code == 0);
  CHECK(imcap::CocoAnnotations::load(tmp.file("d/captions_train.json")).captions().size() == 15);
  CHECK(imcap::test::run_cli({"synth", "--out", tmp.file("e"), "--size", "4"}).exit_code == 2);
  const auto bad = imcap::test::run_cli({"synth", "--out", "/proc/forbidden", "--train", "1"});
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.err, Catch::StartsWith("imcap: error: /proc/forbidden"));
}

TEST_CASE("every synthetic kind is deterministic and its captions name what it drew",
          "[synthetic]") {
  using imcap::SyntheticKind;
  for (const auto kind : {SyntheticKind::kCounts, SyntheticKind::kRelations, SyntheticKind::kGlyphs,
                          SyntheticKind::kTextures}) {
    INFO(imcap::to_string(kind));
    CHECK(imcap::parse_synthetic_kind(imcap::to_string(kind)) == kind);
    imcap::SyntheticOptions o;
    o.kind = kind;
    o.image_size = 64;
    std::set<std::string> first_captions;
    for (std::uint64_t seed = 1; seed <= 40; ++seed) {
      imcap::SyntheticScene a, b;
      const auto pa = imcap::render_synthetic_scene(seed, o, a);
      CHECK(pa == imcap::render_synthetic_scene(seed, o, b));
      REQUIRE(pa.size() == 64u * 64u * 3u);
      REQUIRE(a.captions.size() == 5);
      CHECK(std::set<std::string>(a.captions.begin(), a.captions.end()).size() == 5);
      REQUIRE(!a.shapes.empty());
      first_captions.insert(a.captions[0]);
      for (const auto& caption : a.captions) {
        for (const auto& s : a.shapes) {
          CHECK_THAT(caption, Catch::Contains(s.color));
          CHECK_THAT(caption, Catch::Contains(s.kind));
          if (!s.size.empty()) CHECK_THAT(caption, Catch::Contains(s.size));
        }
      }
      // Something was drawn: every shape colour has a channel below 90 or above 190, which the
      // muted background (96 to 182) never has.
      int drawn = 0;
      for (std::size_t i = 0; i < pa.size(); i += 3)
        drawn += std::any_of(pa.begin() + i, pa.begin() + i + 3,
                             [](std::uint8_t v) { return v < 90 || v > 190; });
      CHECK(drawn > 40 * static_cast<int>(a.shapes.size()));
      if (kind == SyntheticKind::kCounts) {
        const auto& c = a.captions[0];
        CHECK((c.find("one ") != std::string::npos || c.find("two ") != std::string::npos ||
               c.find("three ") != std::string::npos || c.find("four ") != std::string::npos));
      }
      if (kind == SyntheticKind::kRelations) {
        const auto& c = a.captions[0];
        CHECK((c.find(" above ") != std::string::npos || c.find(" below ") != std::string::npos ||
               c.find(" left of ") != std::string::npos ||
               c.find(" right of ") != std::string::npos));
      }
    }
    CHECK(first_captions.size() > 30);  // scenes vary
  }
  CHECK_THROWS_AS(imcap::parse_synthetic_kind("clouds"), imcap::InvalidArgument);
  imcap::test::TempDir tmp;
  const auto r = imcap::test::run_cli({"synth", "--out", tmp.file("g"), "--kind", "glyphs",
                                       "--train", "2", "--val", "1", "--size", "32"});
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(imcap::test::read_text(tmp.file("g/captions_train.json")),
             Catch::Contains("synthetic glyphs dataset"));
  CHECK(imcap::test::run_cli({"synth", "--out", tmp.file("h"), "--kind", "clouds"}).exit_code == 2);
}
