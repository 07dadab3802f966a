// DataLoader: the three batching modes, determinism, workers.
#include "catch.hpp"

#include <set>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/io.hpp"
#include "imcap/data_loader.hpp"
#include "imcap/error.hpp"
#include "support.hpp"

namespace {

// 12 images; image i has (i % 3) + 1 captions of varied lengths.
struct Fixture {
  imcap::test::TempDir tmp;
  std::unique_ptr<imcap::CocoDataset> data;

  Fixture() {
    nlohmann::json j;
    j["images"] = nlohmann::json::array();
    j["annotations"] = nlohmann::json::array();
    const char* words[] = {"red", "square", "blue", "circle", "small", "green", "triangle"};
    int ann = 0;
    imcap::detail::create_directories(tmp.file("img"));
    for (int i = 0; i < 12; ++i) {
      const std::string name = "im" + std::to_string(i) + ".png";
      imcap::test::write_pattern_png(tmp.file("img/" + name), 20 + i, 18, static_cast<unsigned>(i));
      j["images"].push_back({{"id", 100 + i}, {"file_name", name}});
      for (int k = 0; k <= i % 3; ++k) {
        std::string caption = "a";
        for (int w = 0; w < (i + k) % 4 + 1; ++w)
          caption += std::string(" ") + words[(i + w + k) % 7];
        j["annotations"].push_back({{"id", ann++}, {"image_id", 100 + i}, {"caption", caption}});
      }
    }
    imcap::test::write_text(tmp.file("ann.json"), j.dump());
    auto vocab = imcap::Vocabulary::build({tmp.file("ann.json")}, {/*threshold=*/1});
    data = std::make_unique<imcap::CocoDataset>(
        tmp.file("ann.json"), tmp.file("img"), vocab,
        imcap::ImageTransform::train(/*resize=*/16, /*crop=*/12));
  }
};

std::vector<imcap::Batch> epoch(const imcap::CocoDataset& data, imcap::DataLoaderOptions o,
                                std::size_t e = 0) {
  imcap::DataLoader loader(data, o);
  loader.start_epoch(e);
  std::vector<imcap::Batch> out;
  while (auto b = loader.next()) out.push_back(std::move(*b));
  return out;
}

}  // namespace

TEST_CASE("padded batches cover every caption once, with lengths and a mask", "[data_loader]") {
  Fixture f;
  const auto& data = *f.data;
  REQUIRE(data.size() == 24);
  imcap::DataLoaderOptions o;
  o.batch_size = 5;
  o.seed = 7;
  const auto batches = epoch(data, o);
  REQUIRE(batches.size() == 5);
  CHECK(imcap::DataLoader(data, o).batches_per_epoch() == 5);
  std::multiset<std::size_t> seen;
  for (const auto& b : batches) {
    seen.insert(b.caption_indices.begin(), b.caption_indices.end());
    const auto bsz = static_cast<std::int64_t>(b.size());
    CHECK(b.captions.size(0) == bsz);
    CHECK(b.images.size(0) == static_cast<std::int64_t>(b.image_ids.size()));
    CHECK(b.images.sizes().slice(1) == torch::IntArrayRef{3, 12, 12});
    CHECK(b.mask.sum().item<std::int64_t>() == b.lengths.sum().item<std::int64_t>());
    for (std::int64_t i = 0; i < bsz; ++i) {
      const auto ci = b.caption_indices[static_cast<std::size_t>(i)];
      const auto& ids = data.caption_ids(ci);
      CHECK(b.lengths[i].item<std::int64_t>() == static_cast<std::int64_t>(ids.size()));
      for (std::size_t t = 0; t < ids.size(); ++t)
        CHECK(b.captions[i][static_cast<std::int64_t>(t)].item<std::int64_t>() == ids[t]);
      for (std::int64_t t = static_cast<std::int64_t>(ids.size()); t < b.captions.size(1); ++t)
        CHECK(b.captions[i][t].item<std::int64_t>() == 0);  // <pad>
      // the caption's image row holds its image
      const auto row = b.image_index[i].item<std::int64_t>();
      CHECK(b.image_ids[static_cast<std::size_t>(row)] == data.image_id_of(ci));
    }
  }
  CHECK(seen.size() == 24);
  CHECK(std::set<std::size_t>(seen.begin(), seen.end()).size() == 24);
  o.drop_last = true;
  CHECK(epoch(data, o).size() == 4);
}

TEST_CASE("each image appears once per batch even with several of its captions", "[data_loader]") {
  Fixture f;
  imcap::DataLoaderOptions o;
  o.batch_size = 24;
  o.shuffle = false;
  const auto batches = epoch(*f.data, o);
  REQUIRE(batches.size() == 1);
  CHECK(batches[0].images.size(0) == 12);
  CHECK(std::set<std::int64_t>(batches[0].image_ids.begin(), batches[0].image_ids.end()).size() ==
        12);
}

TEST_CASE("same_length batches need no padding (the seed's sampler)", "[data_loader]") {
  Fixture f;
  imcap::DataLoaderOptions o;
  o.batch_size = 4;
  o.mode = imcap::BatchMode::kSameLength;
  o.seed = 3;
  const auto batches = epoch(*f.data, o);
  CHECK(batches.size() == 6);
  std::set<std::int64_t> lengths_drawn;
  for (const auto& b : batches) {
    CHECK(b.size() == 4);
    CHECK(b.mask.all().item<bool>());
    CHECK((b.lengths == b.lengths[0]).all().item<bool>());
    lengths_drawn.insert(b.lengths[0].item<std::int64_t>());
  }
  CHECK(lengths_drawn.size() > 1);
}

TEST_CASE("image_major batches hold whole images", "[data_loader]") {
  Fixture f;
  const auto& data = *f.data;
  imcap::DataLoaderOptions o;
  o.batch_size = 6;
  o.mode = imcap::BatchMode::kImageMajor;
  const auto batches = epoch(data, o);
  std::size_t captions = 0;
  for (const auto& b : batches) {
    CHECK(b.size() <= 6);
    captions += b.size();
    for (const auto id : b.image_ids) {
      const auto n = std::count_if(b.caption_indices.begin(), b.caption_indices.end(),
                                   [&](std::size_t ci) { return data.image_id_of(ci) == id; });
      CHECK(static_cast<std::size_t>(n) == data.captions_of_image(id).size());
    }
  }
  CHECK(captions == 24);
  CHECK(imcap::DataLoader(data, o).batches_per_epoch() == batches.size());
}

TEST_CASE("the order and transforms depend only on the seed, not on the workers", "[data_loader]") {
  Fixture f;
  imcap::DataLoaderOptions o;
  o.batch_size = 7;
  o.seed = 11;
  o.workers = 0;
  const auto serial = epoch(*f.data, o, 2);
  o.workers = 3;
  o.prefetch = 2;
  const auto threaded = epoch(*f.data, o, 2);
  REQUIRE(serial.size() == threaded.size());
  for (std::size_t i = 0; i < serial.size(); ++i) {
    CHECK(serial[i].caption_indices == threaded[i].caption_indices);
    CHECK(torch::equal(serial[i].images, threaded[i].images));
  }
  const auto other_epoch = epoch(*f.data, o, 3);
  CHECK(other_epoch[0].caption_indices != serial[0].caption_indices);
  o.seed = 12;
  CHECK(epoch(*f.data, o, 2)[0].caption_indices != serial[0].caption_indices);
}

TEST_CASE("skip resumes an epoch in the middle", "[data_loader]") {
  Fixture f;
  imcap::DataLoaderOptions o;
  o.batch_size = 5;
  const auto all = epoch(*f.data, o, 1);
  imcap::DataLoader loader(*f.data, o);
  loader.start_epoch(1);
  loader.skip(3);
  auto b = loader.next();
  REQUIRE(b);
  CHECK(b->index == 3);
  CHECK(b->caption_indices == all[3].caption_indices);
  CHECK(torch::equal(b->images, all[3].images));
}

TEST_CASE("a broken image surfaces as an error from next()", "[data_loader]") {
  Fixture f;
  imcap::test::write_text(f.tmp.file("img/im4.png"), "not a png");
  imcap::DataLoaderOptions o;
  o.batch_size = 24;
  imcap::DataLoader loader(*f.data, o);
  loader.start_epoch(0);
  CHECK_THROWS_WITH(loader.next(), Catch::Contains("im4.png"));
  o.batch_size = 0;
  CHECK_THROWS_AS(imcap::DataLoader(*f.data, o), imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::parse_batch_mode("random"), imcap::InvalidArgument);
}

TEST_CASE("pin_memory gives page-locked batches with CUDA, and a clear error without",
          "[data_loader][cuda]") {
  Fixture f;
  imcap::DataLoaderOptions o;
  o.batch_size = 6;
  o.pin_memory = true;
  if (!torch::cuda::is_available()) {
    CHECK_THROWS_WITH(imcap::DataLoader(*f.data, o), Catch::Contains("pin_memory needs CUDA"));
    return;
  }
  imcap::DataLoader loader(*f.data, o);
  loader.start_epoch(0);
  const auto batch = loader.next();
  REQUIRE(batch);
  CHECK(batch->images.is_pinned());
  CHECK(batch->captions.is_pinned());
  CHECK(batch->lengths.is_pinned());
  CHECK(batch->image_index.is_pinned());
}

TEST_CASE("a flipped image's captions have left and right swapped", "[data_loader]") {
  imcap::test::TempDir tmp;
  nlohmann::json j;
  j["images"] = nlohmann::json::array();
  j["annotations"] = nlohmann::json::array();
  imcap::detail::create_directories(tmp.file("img"));
  for (int i = 0; i < 6; ++i) {
    const std::string name = "im" + std::to_string(i) + ".png";
    imcap::test::write_pattern_png(tmp.file("img/" + name), 20, 20, static_cast<unsigned>(i));
    j["images"].push_back({{"id", i}, {"file_name", name}});
    j["annotations"].push_back(
        {{"id", 2 * i}, {"image_id", i}, {"caption", "a red square on the left of a circle"}});
    j["annotations"].push_back(
        {{"id", 2 * i + 1}, {"image_id", i}, {"caption", "the circle is right of the square"}});
  }
  imcap::test::write_text(tmp.file("ann.json"), j.dump());
  const auto vocab = imcap::Vocabulary::build({tmp.file("ann.json")}, {/*threshold=*/1});
  const auto left = vocab.id("left"), right = vocab.id("right");
  for (const double p : {0.0, 0.5, 1.0}) {
    INFO("flip probability " << p);
    imcap::TransformOptions t;
    t.resize = 16;
    t.crop = 12;
    t.train = true;
    t.flip_probability = p;
    imcap::CocoDataset data(tmp.file("ann.json"), tmp.file("img"), vocab, imcap::ImageTransform(t));
    CHECK(data.mirrored_token(left) == right);
    CHECK(data.mirrored_token(right) == left);
    CHECK(data.mirrored_token(vocab.id("square")) == vocab.id("square"));
    imcap::DataLoaderOptions o;
    o.batch_size = 4;
    o.mode = imcap::BatchMode::kImageMajor;
    o.workers = 0;
    o.seed = 3;
    std::size_t swapped = 0, kept = 0;
    for (const auto& b : epoch(data, o)) {
      const auto captions = b.captions.accessor<std::int64_t, 2>();
      for (std::size_t r = 0; r < b.size(); ++r) {
        const auto& ids = data.caption_ids(b.caption_indices[r]);
        bool same = true, mirrored = true;
        for (std::size_t k = 0; k < ids.size(); ++k) {
          const auto got = captions[static_cast<std::int64_t>(r)][static_cast<std::int64_t>(k)];
          same = same && got == ids[k];
          mirrored = mirrored && got == data.mirrored_token(ids[k]);
        }
        REQUIRE((same || mirrored));
        (same ? kept : swapped) += 1;
      }
    }
    if (p == 0.0) CHECK(swapped == 0);
    if (p == 1.0) CHECK(kept == 0);
    if (p == 0.5) CHECK((swapped > 0 && kept > 0));
  }
  // Another pair, or none.
  imcap::CocoDatasetOptions none;
  none.flip_swap_words.clear();
  imcap::CocoDataset plain(tmp.file("ann.json"), tmp.file("img"), vocab,
                           imcap::ImageTransform::train(16, 12), none);
  CHECK(plain.mirrored_token(left) == left);
}

TEST_CASE("the decoded-image cache gives the pixels and draws of decoding again", "[data_loader]") {
  Fixture f;
  const auto& plain = *f.data;
  imcap::CocoDatasetOptions o;
  o.cache_bytes = 16 * 18 * 3 * 5;  // room for about five of the twelve resized images
  const imcap::CocoDataset cached(f.tmp.file("ann.json"), f.tmp.file("img"), plain.vocabulary(),
                                  plain.transform(), o);
  for (int pass = 0; pass < 3; ++pass) {
    for (const auto id : plain.image_ids()) {
      std::mt19937_64 a(static_cast<std::uint64_t>(id * 7 + pass)), b = a;
      bool fa = false, fb = false;
      const auto want = plain.image(id, a, &fa);
      const auto got = cached.image(id, b, &fb);
      INFO("image " << id << " pass " << pass);
      REQUIRE(got.sizes() == want.sizes());
      CHECK(torch::equal(got, want));
      CHECK(fa == fb);
      CHECK(a() == b());  // the same random draws
    }
  }
  // The whole loader too, with workers.
  imcap::DataLoaderOptions lo;
  lo.batch_size = 5;
  lo.workers = 2;
  lo.seed = 9;
  const auto want = epoch(plain, lo, 1), got = epoch(cached, lo, 1);
  REQUIRE(want.size() == got.size());
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(torch::equal(want[i].images, got[i].images));
}
