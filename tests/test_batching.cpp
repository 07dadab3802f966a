// BatchingCaptioner: concurrent requests gathered into batches, each with its own rows.
#include "catch.hpp"

#include <chrono>
#include <future>
#include <thread>

#include "imcap/batching_captioner.hpp"
#include "imcap/error.hpp"
#include "support.hpp"
#include "tiny.hpp"

namespace {

using imcap::test::Tiny;
using namespace std::chrono_literals;

std::vector<std::string> val_images(const Tiny& t, int n) {
  std::vector<std::string> paths;
  for (int id = 1000000; id < 1000000 + n; ++id)
    paths.push_back(t.files.val_images + "/" + std::to_string(id) + ".jpg");
  return paths;
}

std::shared_ptr<const imcap::Captioner> tiny_captioner(const Tiny& t) {
  t.model().save(t.tmp.file("m.imcap"));
  return std::make_shared<const imcap::Captioner>(imcap::Captioner::load(t.tmp.file("m.imcap")));
}

}  // namespace

TEST_CASE("concurrent requests share batches and each gets its own image's captions",
          "[batching]") {
  Tiny t;
  const auto captioner = tiny_captioner(t);
  const auto paths = val_images(t, 6);
  imcap::CaptionOptions options;
  options.beam_size = 2;
  options.num_return = 2;
  std::vector<std::vector<imcap::Caption>> expected;
  for (const auto& p : paths)
    expected.push_back(
        captioner->candidates(captioner->encode(std::vector<std::string>{p}, options), options)
            .front());
  imcap::BatchingOptions bo;
  bo.max_batch = 4;
  bo.max_wait = 200ms;  // long enough for the threads below to meet
  imcap::BatchingCaptioner batcher(captioner, bo);
  std::vector<std::future<imcap::BatchResult>> futures;
  for (int round = 0; round < 3; ++round) {
    std::vector<std::thread> threads;
    std::vector<std::future<imcap::BatchResult>> these(paths.size());
    for (std::size_t i = 0; i < paths.size(); ++i)
      threads.emplace_back(
          [&, i] { these[i] = batcher.submit({imcap::decode_image(paths[i])}, options); });
    for (auto& th : threads) th.join();
    for (std::size_t i = 0; i < paths.size(); ++i) {
      const imcap::BatchResult r = these[i].get();
      REQUIRE(r.captions.size() == 1);
      REQUIRE(r.captions[0].size() == 2);
      CHECK(r.timing.batch_images >= 1);
      CHECK(r.timing.batch_images <= 4);
      for (std::size_t k = 0; k < 2; ++k) {
        CHECK(r.captions[0][k].text == expected[i][k].text);
        CHECK(r.captions[0][k].log_prob == Approx(expected[i][k].log_prob).margin(1e-4));
      }
    }
  }
  const imcap::BatchingStats s = batcher.stats();
  CHECK(s.requests == 18);
  CHECK(s.images == 18);
  CHECK(s.batches < 18);  // some requests shared a batch
  std::uint64_t counted = 0, multi = 0;
  for (std::size_t n = 1; n < s.batch_sizes.size(); ++n) {
    counted += s.batch_sizes[n];
    if (n > 1) multi += s.batch_sizes[n];
  }
  CHECK(counted == s.batches);
  CHECK(multi > 0);
  CHECK(s.batch_sizes.size() <= 5);  // never more than max_batch images
  CHECK(s.queued_images == 0);
}

TEST_CASE("requests with different search options never share a batch", "[batching]") {
  Tiny t;
  const auto captioner = tiny_captioner(t);
  const auto paths = val_images(t, 2);
  imcap::CaptionOptions greedy, beam;
  greedy.beam_size = 1;
  beam.beam_size = 3;
  beam.num_return = 3;
  imcap::BatchingOptions bo;
  bo.max_batch = 8;
  bo.max_wait = 100ms;
  imcap::BatchingCaptioner batcher(captioner, bo);
  const std::vector<imcap::Image> a{imcap::decode_image(paths[0])};
  const std::vector<imcap::Image> b{imcap::decode_image(paths[1])};
  auto f1 = batcher.submit(a, greedy);
  auto f2 = batcher.submit(b, beam);
  auto f3 = batcher.submit(b, greedy);
  const auto r1 = f1.get(), r2 = f2.get(), r3 = f3.get();
  CHECK(r1.captions[0].size() == 1);
  CHECK(r2.captions[0].size() == 3);
  CHECK(r1.timing.batch_images == 2);  // with f3, not f2
  CHECK(r2.timing.batch_images == 1);
  CHECK(r3.captions[0][0].text == captioner->caption(paths[1], greedy).text);
  CHECK(r2.captions[0][0].text == captioner->caption(paths[1], beam).text);
}

TEST_CASE("a request of several images keeps them together, in order", "[batching]") {
  Tiny t;
  const auto captioner = tiny_captioner(t);
  const auto paths = val_images(t, 5);
  std::vector<imcap::Image> images;
  for (const auto& p : paths) images.push_back(imcap::decode_image(p));
  imcap::BatchingOptions bo;
  bo.max_batch = 2;  // smaller than the request: it is searched alone
  imcap::BatchingCaptioner batcher(captioner, bo);
  const auto r = batcher.caption(images, captioner->options());
  REQUIRE(r.captions.size() == 5);
  CHECK(r.timing.batch_images == 5);
  const auto expected = captioner->caption_batch(paths);
  for (std::size_t i = 0; i < 5; ++i) CHECK(r.captions[i][0].text == expected[i].text);
}

TEST_CASE("a full queue refuses; drain() stops the waiting; close() refuses the rest",
          "[batching]") {
  Tiny t;
  const auto captioner = tiny_captioner(t);
  const std::vector<imcap::Image> one{imcap::decode_image(val_images(t, 1)[0])};
  imcap::BatchingOptions bo;
  bo.max_batch = 8;
  bo.max_wait = 60s;  // the first request waits for company until close()
  bo.max_queue = 2;
  imcap::BatchingCaptioner batcher(captioner, bo);
  auto first = batcher.submit(one, captioner->options());
  auto second = batcher.submit(one, captioner->options());
  CHECK(batcher.stats().queued_images == 2);
  CHECK_THROWS_AS(batcher.submit(one, captioner->options()), imcap::QueueFull);
  batcher.drain();  // no more waiting: the two go now, in one batch
  CHECK(first.wait_for(30s) == std::future_status::ready);
  CHECK(second.get().timing.batch_images == 2);
  auto third = batcher.submit(one, captioner->options());  // still taken while draining
  CHECK(third.get().captions.size() == 1);
  batcher.close();
  CHECK(first.get().captions.size() == 1);
  CHECK_THROWS_AS(batcher.submit(one, captioner->options()), imcap::Closed);
  batcher.close();  // again: nothing to do
}

TEST_CASE("BatchingCaptioner refuses bad options and inputs", "[batching]") {
  Tiny t;
  const auto captioner = tiny_captioner(t);
  imcap::BatchingOptions bad;
  bad.max_batch = 0;
  CHECK_THROWS_AS(imcap::BatchingCaptioner(captioner, bad), imcap::InvalidArgument);
  bad = {};
  bad.max_wait = std::chrono::microseconds(-1);
  CHECK_THROWS_AS(imcap::BatchingCaptioner(captioner, bad), imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::BatchingCaptioner(nullptr), imcap::InvalidArgument);
  imcap::BatchingCaptioner batcher(captioner);
  CHECK_THROWS_AS(batcher.submit(std::vector<imcap::Image>{}), imcap::InvalidArgument);
  imcap::CaptionOptions o;
  o.num_return = 5;  // more than beam 3
  const std::vector<imcap::Image> one{imcap::decode_image(val_images(t, 1)[0])};
  CHECK_THROWS_AS(batcher.submit(one, o), imcap::InvalidArgument);
  CHECK_THROWS_AS(batcher.submit(torch::zeros({2, 3}), captioner->options()),
                  imcap::InvalidArgument);
}
