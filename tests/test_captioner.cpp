// Captioner: the one-call API, shared between threads.
#include "catch.hpp"

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
  const auto ids = dec->sample(features, 20, captioner.model().vocab().end_id())[0];
  std::vector<std::int64_t> want(ids.data_ptr<std::int64_t>(),
                                 ids.data_ptr<std::int64_t>() + ids.numel());
  CHECK(captioner.caption_features(features, greedy)[0].text ==
        captioner.model().vocab().decode(want));
  CHECK_THROWS_WITH(captioner.caption(t.tmp.file("missing.jpg")), Catch::Contains("missing.jpg"));
}
