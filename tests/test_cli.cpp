// The imcap command line end to end: train, caption, predict, eval, and the demo.
#include "catch.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <future>
#include <map>
#include <set>
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

TEST_CASE("train, caption, predict and eval from the command line", "[trainer][cli]") {
  Tiny t;
  const auto& f = t.files;
  auto r = imcap::test::run_cli(
      imcap::test::tiny_train_args(f, t.tmp.file("run"),
                                   {"--epochs", "1", "--batch-size", "20", "--flip-probability",
                                    "0", "--threads", "1", "--blas-threads", "2"}));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(imcap::detail::path_exists(t.tmp.file("run/best.imcap")));
  // The first line names the threads (OpenBLAS's only where LibTorch uses OpenBLAS).
  const std::string first_line = r.out.substr(0, r.out.find('\n'));
  CHECK_THAT(first_line, Catch::StartsWith("training resnet18") && Catch::Contains("Torch 1"));
  if (first_line.find("OpenBLAS") != std::string::npos)
    CHECK_THAT(first_line, Catch::EndsWith("threads: Torch 1, OpenBLAS 2"));
  const auto model = t.tmp.file("run/last.imcap");
  r = imcap::test::run_cli({"caption", "--model", model, f.val_images + "/1000000.jpg", "--json"});
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.out);
  REQUIRE(j.size() == 1);
  CHECK(j[0].contains("caption"));
  CHECK(j[0]["tokens"].is_array());
  CHECK(j[0]["log_prob"].get<double>() <= 0.0);
  // Compressed decode weights choose the same greedy words, with nearly the same log p.
  std::vector<nlohmann::json> greedy;
  for (const std::string weights : {"float32", "bfloat16", "int8"}) {
    r = imcap::test::run_cli({"caption", "--model", model, f.val_images + "/1000000.jpg", "--json",
                              "--beam", "1", "--decode-weights", weights});
    INFO(weights << ": " << r.err);
    REQUIRE(r.exit_code == 0);
    greedy.push_back(nlohmann::json::parse(r.out).at(0));
  }
  for (std::size_t i = 1; i < greedy.size(); ++i) {
    CHECK(greedy[i]["tokens"] == greedy[0]["tokens"]);
    CHECK(std::abs(greedy[i]["log_prob"].get<double>() - greedy[0]["log_prob"].get<double>()) <
          0.05);
  }
  // --num-return: the best captions of each image, best first, the first one the plain caption.
  r = imcap::test::run_cli({"caption", "--model", model, f.val_images + "/1000000.jpg", "--json",
                            "--beam", "3", "--num-return", "3"});
  REQUIRE(r.exit_code == 0);
  const auto three = nlohmann::json::parse(r.out).at(0);
  REQUIRE(three["candidates"].size() == 3);
  CHECK(three["candidates"][0]["caption"] == j[0]["caption"]);
  CHECK(three["caption"] == j[0]["caption"]);
  CHECK(three["candidates"][0]["log_prob"].get<double>() >=
        three["candidates"][1]["log_prob"].get<double>());
  CHECK(three["candidates"][1]["caption"] != three["candidates"][0]["caption"]);
  r = imcap::test::run_cli({"caption", "--model", model, f.val_images + "/1000000.jpg", "--beam",
                            "3", "--num-return", "2"});
  REQUIRE(r.exit_code == 0);
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 2);
  CHECK_THAT(r.out, Catch::StartsWith(f.val_images + "/1000000.jpg\t" +
                                      three["caption"].get<std::string>() + "\t-"));
  r = imcap::test::run_cli({"caption", "--model", model, f.val_images + "/1000000.jpg", "--beam",
                            "2", "--num-return", "3"});
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains("--num-return 3 is more than --beam 2"));
  // --min-length keeps <end> away: at least 6 words.
  r = imcap::test::run_cli(
      {"caption", "--model", model, f.val_images + "/1000000.jpg", "--json", "--min-length", "6"});
  REQUIRE(r.exit_code == 0);
  CHECK(nlohmann::json::parse(r.out).at(0)["tokens"].size() >= 6);
#ifdef IMCAP_EXAMPLES_DIR
  // The bundled example captions with the trained model, as the CLI does (both beam 3).
  const auto example = imcap::test::run_process(
      {std::string(IMCAP_EXAMPLES_DIR) + "/caption_image", model, f.val_images + "/1000000.jpg"});
  INFO(example.err);
  CHECK(example.exit_code == 0);
  CHECK_THAT(example.out, Catch::Contains(": " + j[0]["caption"].get<std::string>() + "  (log p"));
#endif
  r = imcap::test::run_cli({"predict", "--model", model, "--annotations", f.val_annotations,
                            "--images", f.val_images, "--out", t.tmp.file("results.json"), "--beam",
                            "2"});
  REQUIRE(r.exit_code == 0);
  const auto results = imcap::load_caption_results(t.tmp.file("results.json"));
  CHECK(results.size() == 6);
  r = imcap::test::run_cli({"eval", "--annotations", f.val_annotations, "--results",
                            t.tmp.file("results.json"), "--json"});
  CHECK(r.exit_code == 0);
  // Bad input and bad usage.
  r = imcap::test::run_cli({"caption", "--model", t.tmp.file("nope.imcap"), "x.jpg"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::StartsWith("imcap: error: ") && Catch::Contains("nope.imcap"));
  CHECK(imcap::test::run_cli({"caption", "--model", model, "--beam", "0", "x.jpg"}).exit_code == 2);
  CHECK(imcap::test::run_cli({"train", "--annotations", f.train_annotations, "--images",
                              f.train_images, "--out", t.tmp.file("r2"), "--lr", "fast"})
            .exit_code == 2);
  // The options are the library's fields, with its defaults; enum options take their names.
  r = imcap::test::run_cli({"train", "--help"});
  // CLI11 1.9 (Debian 12) prints "{a,b}=default", CLI11 2.x (Debian 13) "{a,b} [default]".
  auto names_with_default = [&r](const std::string& names, const std::string& value) {
    return r.out.find(names + "=" + value) != std::string::npos ||
           r.out.find(names + " [" + value + "]") != std::string::npos;
  };
  INFO(r.out);
  CHECK(names_with_default("{padded,same_length,image_major}",
                           imcap::to_string(imcap::TrainerOptions{}.batching)));
  CHECK(
      names_with_default("{pre,par,init}", imcap::to_string(imcap::DecoderOptions{}.image_inject)));
  r = imcap::test::run_cli(imcap::test::tiny_train_args(
      f, t.tmp.file("r4"), {"--max-steps", "1", "--inject", "init", "--batching", "padded"}));
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::StartsWith("training resnet18 (init)"));
  // The step schedule's period and factor, and the end-of-budget cut on top of it: its half of
  // two epochs is the second.
  r = imcap::test::run_cli(imcap::test::tiny_train_args(
      f, t.tmp.file("r6"),
      {"--epochs", "2", "--lr", "0.01", "--lr-schedule", "step", "--lr-step-epochs", "1",
       "--lr-gamma", "0.25", "--lr-anneal-share", "0.5", "--lr-anneal-factor", "0.5",
       "--log-interval", "1"}));
  REQUIRE(r.exit_code == 0);
  {
    std::set<double> epoch1, epoch2;
    std::ifstream log(t.tmp.file("r6/log.jsonl"));
    for (std::string line; std::getline(log, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j["type"] == "step") (j["epoch"] == 1 ? epoch1 : epoch2).insert(j["lr"].get<double>());
    }
    CHECK(epoch1 == std::set<double>{0.01});
    CHECK(epoch2 == std::set<double>{0.00125});
  }
  r = imcap::test::run_cli(
      imcap::test::tiny_train_args(f, t.tmp.file("r7"), {"--lr-anneal-share", "1"}));
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains("--lr-anneal-share"));
  r = imcap::test::run_cli({"train", "--annotations", f.train_annotations, "--images",
                            f.train_images, "--out", t.tmp.file("r5"), "--inject", "1"});
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains("--inject: 1 not in {pre,par,init}"));
  r = imcap::test::run_cli({"train", "--annotations", f.train_annotations, "--images",
                            f.train_images, "--out", t.tmp.file("r3"), "--resume"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("r3/last.imcap"));
}

TEST_CASE("imcap demo --quick runs end to end and writes a report", "[trainer][demo][slow]") {
  imcap::test::TempDir tmp;
  const auto r =
      imcap::test::run_cli({"demo", "--quick", "--seconds", "10", "--out", tmp.file("demo")});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out,
             Catch::Contains("cross-entropy: BLEU-4") && Catch::Contains("after SCST: BLEU-4"));
  const auto html = imcap::test::read_text(tmp.file("demo/report.html"));
  CHECK_THAT(html, Catch::Contains("<svg") && Catch::Contains("data:image/jpeg;base64,") &&
                       Catch::Contains("<td>cross-entropy</td>") &&
                       Catch::Contains("<td>+ SCST</td>"));
  CHECK(imcap::detail::path_exists(tmp.file("demo/model/last.imcap")));
  CHECK(imcap::detail::path_exists(tmp.file("demo/model-scst/last.imcap")));
  CHECK(html.find("<figcaption>") == std::string::npos);  // no attention to draw
}

TEST_CASE("imcap demo --decoder attention draws the attention in its report",
          "[trainer][demo][attention][slow]") {
  imcap::test::TempDir tmp;
  const auto r = imcap::test::run_cli({"demo", "--quick", "--seconds", "12", "--scst-share", "0",
                                       "--decoder", "attention", "--out", tmp.file("demo")});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("attention LSTM"));
  const auto html = imcap::test::read_text(tmp.file("demo/report.html"));
  CHECK_THAT(html,
             Catch::Contains("soft-attention LSTM") && Catch::Contains("over the CNN's 4 cells"));
  // Every caption with words gets its figures, up to 12 (a briefly trained model on a loaded
  // machine may still say nothing for some images).
  std::size_t worded = 0;
  const std::string open = "<span class='gen'>";
  for (auto at = html.find(open); at != std::string::npos; at = html.find(open, at + 1))
    worded += html.compare(at + open.size(), 7, "</span>") != 0 ? 1 : 0;
  INFO(worded << " captions with words");
  std::size_t figures = 0;
  for (auto at = html.find("<figcaption>"); at != std::string::npos;
       at = html.find("<figcaption>", at + 1))
    ++figures;
  CHECK(figures >= std::min<std::size_t>(worded, 12));
  CHECK((figures > 0) == (worded > 0));
  // Under a sanitizer or a loaded machine the 12 s may be a few steps, after which the model
  // may still end every caption at once: then there is nothing to draw (imcap caption
  // --attention's test draws a fixed model's words).
  if (worded == 0) WARN("no held-out caption has words: the figures were not exercised");
  if (worded > 0) CHECK_THAT(html, Catch::Contains("data:image/png;base64,"));
  CHECK(imcap::CaptionModel::load(tmp.file("demo/model/last.imcap")).decoder_kind() ==
        imcap::DecoderKind::kAttention);
}
