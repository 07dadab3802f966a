// Captioner: the one-call API, shared between threads.
#include "catch.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <future>
#include <map>
#include <thread>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/fused_adam.hpp"
#include "detail/io.hpp"
#include "imcap/captioner.hpp"
#include "imcap/data_loader.hpp"
#include "imcap/error.hpp"
#include "imcap/metrics.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/threads.hpp"
#include "imcap/trainer.hpp"
#include "imcap/weights.hpp"
#include "support.hpp"
#include "tiny.hpp"

namespace {

using imcap::test::Tiny;

}  // namespace

TEST_CASE("one Captioner serves several threads with the same captions as serial use",
          "[captioner]") {
  Tiny t;
  auto model = t.model();
  model.save(t.tmp.file("m.imcap"));
  const auto captioner = imcap::Captioner::load(t.tmp.file("m.imcap"));
  std::vector<std::string> paths;
  for (int id = 1000000; id < 1000006; ++id)
    paths.push_back(t.files.val_images + "/" + std::to_string(id) + ".jpg");
  std::vector<std::string> serial;
  for (const auto& p : paths) serial.push_back(captioner.caption(p).text);
  const auto batched = captioner.caption_batch(paths);
  for (std::size_t i = 0; i < paths.size(); ++i) CHECK(batched[i].text == serial[i]);
  std::vector<std::future<std::vector<std::string>>> jobs;
  for (int k = 0; k < 8; ++k)
    jobs.push_back(std::async(std::launch::async, [&] {
      std::vector<std::string> out;
      for (int rep = 0; rep < 3; ++rep)
        for (const auto& p : paths) out.push_back(captioner.caption(p).text);
      return out;
    }));
  for (auto& j : jobs) {
    const auto got = j.get();
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == serial[i % paths.size()]);
  }
  // Greedy captions equal the decoder's own greedy loop, cut at <end>.
  imcap::CaptionOptions greedy;
  greedy.beam_size = 1;
  greedy.forbid_unk = false;
  torch::NoGradGuard no_grad;
  const auto image = captioner.model().eval_transform()(imcap::decode_image(paths[0]));
  auto enc = captioner.model().encoder();
  auto dec = captioner.model().decoder();
  const auto features = enc->forward(image.unsqueeze(0));
  const auto ids = imcap::greedy_ids(imcap::DecoderStepper(dec), features, 20)[0];
  std::vector<std::int64_t> want(ids.data_ptr<std::int64_t>(),
                                 ids.data_ptr<std::int64_t>() + ids.numel());
  CHECK(captioner.caption_features(features, greedy)[0].text ==
        captioner.model().vocab().decode(want));
  CHECK_THROWS_WITH(captioner.caption(t.tmp.file("missing.jpg")), Catch::Contains("missing.jpg"));
}

TEST_CASE("the Captioner's inputs, alone and batched, with its options or the call's, agree",
          "[captioner]") {
  Tiny t;
  auto model = std::make_shared<imcap::CaptionModel>(t.model());
  model->train(false);
  imcap::CaptionOptions two;
  two.beam_size = 2;
  two.num_return = 2;  // caption() and caption_batch() still give the best one
  const imcap::Captioner captioner(model, two);
  std::vector<std::string> paths;
  std::vector<imcap::Image> images;
  std::vector<torch::Tensor> transformed;
  for (int id = 1000000; id < 1000003; ++id) {
    paths.push_back(t.files.val_images + "/" + std::to_string(id) + ".jpg");
    images.push_back(imcap::decode_image(paths.back()));
    transformed.push_back(model->eval_transform()(images.back()));
  }
  const torch::Tensor tensors = torch::stack(transformed);
  const auto by_path = captioner.caption_batch(paths);
  const auto by_image = captioner.caption_batch(images);
  const auto by_tensor = captioner.caption_batch(tensors);
  const torch::Tensor features = captioner.encode(paths, captioner.options());
  CHECK(torch::equal(features, captioner.encode(images, captioner.options())));
  CHECK(torch::equal(features, captioner.encode(tensors, captioner.options())));
  const auto by_features = captioner.caption_features(features);
  const auto candidates = captioner.candidates(features, captioner.options());
  REQUIRE(by_path.size() == 3);
  REQUIRE(candidates.size() == 3);
  for (std::size_t i = 0; i < paths.size(); ++i) {
    INFO("image " << i);
    CHECK(by_image[i].ids == by_path[i].ids);
    CHECK(by_tensor[i].ids == by_path[i].ids);
    CHECK(by_features[i].ids == by_path[i].ids);
    CHECK(captioner.caption(paths[i]).ids == by_path[i].ids);
    CHECK(captioner.caption(images[i]).ids == by_path[i].ids);
    CHECK(captioner.caption(transformed[i]).ids == by_path[i].ids);
    REQUIRE(candidates[i].size() == 2);
    CHECK(candidates[i][0].ids == by_path[i].ids);
    CHECK(candidates[i][0].text == by_path[i].text);
    CHECK(candidates[i][0].ids != candidates[i][1].ids);
    CHECK(candidates[i][0].log_prob >= candidates[i][1].log_prob);
  }
  // The call's options win over the captioner's: greedy here, as the search gives it.
  imcap::CaptionOptions greedy;
  greedy.beam_size = 1;
  const auto want = imcap::greedy_search(imcap::DecoderStepper(model->decoder()), features, greedy,
                                         imcap::SpecialTokens::of(model->vocab()));
  CHECK(captioner.caption(paths[0], greedy).ids == want[0].tokens);
  CHECK(captioner.caption(images[1], greedy).ids == want[1].tokens);
  CHECK(captioner.caption(transformed[2], greedy).ids == want[2].tokens);
  CHECK(captioner.caption_batch(paths, greedy)[2].ids == want[2].tokens);
  CHECK(captioner.caption_features(features, greedy)[1].log_prob == want[1].log_prob);
  // A copy captions the same; bad options and empty inputs are refused.
  const imcap::Captioner copy = captioner;  // NOLINT(performance-unnecessary-copy-initialization)
  CHECK(copy.caption(paths[1]).ids == by_path[1].ids);
  imcap::CaptionOptions too_many = two;
  too_many.num_return = 3;
  CHECK_THROWS_WITH(captioner.candidates(features, too_many),
                    Catch::Contains("captioner: SearchOptions::num_return must be in [1, "
                                    "beam_size = 2], got 3"));
  CHECK_THROWS_AS(imcap::Captioner(model, too_many), imcap::InvalidArgument);
  CHECK_THROWS_AS(captioner.encode(std::vector<std::string>{}, greedy), imcap::InvalidArgument);
  CHECK(captioner.caption_batch(std::vector<std::string>{}).empty());
}

TEST_CASE(
    "set_cpu_threads sets Torch's threads and OpenBLAS's as the imcap program does, and "
    "refuses counts outside its range",
    "[captioner][threads]") {
  const imcap::CpuThreads before = imcap::cpu_threads();
  struct Restore {
    imcap::CpuThreads t;
    ~Restore() { imcap::set_cpu_threads(t.torch, t.blas > 0 ? t.blas : 1); }
  } restore{before};
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  imcap::CpuThreads t = imcap::set_cpu_threads(3, 1);
  CHECK(t.torch == 3);
  CHECK(torch::get_num_threads() == 3);
  // Debian's LibTorch calls OpenBLAS; LibTorch builds with MKL or without a BLAS report 0.
  if (t.blas > 0) CHECK(t.blas == 1);
  t = imcap::set_cpu_threads();
  CHECK(t.torch == cores);
  CHECK(imcap::cpu_threads().torch == cores);
  if (t.blas > 0) {
    t = imcap::set_cpu_threads(1, 2);
    CHECK(t.torch == 1);
    CHECK(t.blas == 2);
  }

  const imcap::CpuThreads kept = imcap::cpu_threads();
  CHECK_THROWS_WITH(imcap::set_cpu_threads(-1),
                    Catch::Contains("set_cpu_threads: threads = -1: expected 0 (one per core) to "
                                    "1024"));
  CHECK_THROWS_WITH(imcap::set_cpu_threads(2, 0),
                    Catch::Contains("set_cpu_threads: blas_threads = 0: expected 1 to 1024"));
  CHECK_THROWS_AS(imcap::set_cpu_threads(-1), imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::set_cpu_threads(imcap::kMaxCpuThreads + 1), imcap::InvalidArgument);
  // A refused call changes nothing.
  CHECK(imcap::cpu_threads().torch == kept.torch);
  CHECK(imcap::cpu_threads().blas == kept.blas);
}
