// imcap bench: the JSON has the keys and nesting of ../shared/bench/python_baseline.py's output
// (checked here without that file, which a user's clone lacks), at tiny shapes (--smoke).
#include "catch.hpp"

#include <cstdlib>

#include <nlohmann/json.hpp>

#include "support.hpp"

namespace {

using nlohmann::json;

void check_figure(const json& j, const std::string& key) {
  INFO(key);
  REQUIRE(j.contains(key));
  const json& f = j.at(key);
  for (const char* k : {"median", "min", "max"}) {
    INFO(k);
    REQUIRE(f.contains(k));
    CHECK(f[k].is_number());
  }
  CHECK(f["min"].get<double>() <= f["median"].get<double>());
  CHECK(f["median"].get<double>() <= f["max"].get<double>());
  CHECK(f["min"].get<double>() > 0.0);
}

}  // namespace

TEST_CASE("imcap bench --json prints the baseline's keys and nesting", "[bench][cli]") {
  const auto r = imcap::test::run_cli({"bench", "--json", "--quick", "--smoke", "--threads", "1"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const json j = json::parse(r.out);
  // The figures of python_baseline.py, in its nesting.
  REQUIRE(j.contains("encoder_ms_per_image"));
  check_figure(j["encoder_ms_per_image"], "batch1");
  check_figure(j["encoder_ms_per_image"], "batch8");
  CHECK(j["encoder_ms_per_image"]["batch1"]["reps"] == 1);
  check_figure(j, "greedy_decode_ms");
  check_figure(j, "decoder_train_step_ms");
  // Smoke shapes: batch 4 x 14 tokens; vocabulary 50, E 8, H 16, ResNet-18 (512) head with BN:
  // embedding 400 + LSTM 1,664 + output 850 + Linear(512, 8) 4,104 + BatchNorm1d 16.
  CHECK(j["decoder_train_step_ms"]["tokens_per_step"] == 56);
  CHECK(j["decoder_train_step_ms"]["trainable_params"] == 7034);
  check_figure(j, "data_pipeline_images_per_s");
  CHECK(j["data_pipeline_images_per_s"]["images_per_pass"] == 4);
  CHECK(j["data_pipeline_images_per_s"]["passes"] == 1);
  CHECK(j["data_pipeline_images_per_s"]["ms_per_image_median"].get<double>() > 0.0);
  check_figure(j, "full_caption_ms");
  check_figure(j, "full_caption_over_encoder");
  CHECK(j["config"]["decode_weights"] == "float32");
  CHECK(j["benchmark_wall_s"].is_number());
  for (const char* k : {"cnn", "vocab", "embed", "hidden", "train_batch", "caption_len",
                        "max_decode_steps", "reps_warmup"}) {
    INFO(k);
    CHECK(j["config"].contains(k));
  }
  CHECK(j["config"]["vocab"] == 50);
  for (const char* k : {"torch", "cpu_count", "torch_num_threads", "mkldnn_enabled", "openblas"}) {
    INFO(k);
    CHECK(j["env"].contains(k));
  }
  CHECK(j["env"]["torch_num_threads"] == 1);
  // The CLI starts itself again with OpenBLAS kernels that fit the CPU where the loaded
  // OpenBLAS does not know it and falls back to Prescott's (cli/blas_core.hpp).
  if (j["env"]["openblas"].is_object() && std::getenv("OPENBLAS_CORETYPE") == nullptr &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    INFO(j["env"]["openblas"].dump());
    CHECK(j["env"]["openblas"]["corename"] != "Prescott");
    CHECK(j["env"]["openblas"]["corename"] != "prescott");
  }
  // imcap's own figures.
  check_figure(j, "data_pipeline_images_per_s_all_threads");
  CHECK(j["data_pipeline_images_per_s_all_threads"]["threads"].get<int>() >= 1);
  check_figure(j, "coco_annotations_load_ms");
  CHECK(j["coco_annotations_load_ms"]["images"] == 50);
  CHECK(j["coco_annotations_load_ms"]["captions"] == 250);
  check_figure(j, "vocabulary_build_ms");
  CHECK(j["vocabulary_build_ms"]["vocabulary_size"].get<int>() > 4);
  CHECK(j["memory"]["peak_rss_mib"].get<double>() > 1.0);
  // End-to-end training at imcap train's defaults: both cases, timed steps only.
  for (const char* k : {"resnet18_64px_scratch", "resnet50_224px_frozen"}) {
    INFO(k);
    const auto& e = j["train_e2e_captions_per_s"][k];
    CHECK(e["steps"] == 2);
    CHECK(e["captions"].get<double>() > 0.0);
    CHECK(e["captions_per_s"].get<double>() ==
          Approx(e["captions"].get<double>() / e["seconds"].get<double>()));
    CHECK(e["batching"] == "image_major");
  }
  CHECK(j["config"].contains("train_e2e"));
  // The attention figures (bench/attention_baseline.py's keys), beside Show and Tell's greedy
  // decoding at the same H and V. Smoke shapes: E = A = 8, C 24, P 4, H 16, V 50; the decoder's
  // parameters: embedding 400, attention 200 + 136 + 9, LSTMCell(32, 16) 3,200, init_h and
  // init_c 400 each, f_beta 408, fc 850.
  for (const char* k : {"attention_greedy_ms", "show_tell_greedy_ms"}) {
    INFO(k);
    check_figure(j[k], "batch1");
    check_figure(j[k], "batch3");
    CHECK(j[k]["batch3"]["ms_per_step"].get<double>() > 0.0);
  }
  CHECK(j["attention_step_vs_show_tell"]["batch3"].get<double>() > 0.0);
  check_figure(j, "attention_train_step_ms");
  CHECK(j["attention_train_step_ms"]["tokens_per_step"] == 52);
  CHECK(j["attention_train_step_ms"]["trainable_params"] == 6003);
  CHECK(j["attention_config"]["cells"] == 4);
}

TEST_CASE("imcap bench --device-figures prints the GPU goals' figures", "[bench][cli]") {
  const auto r = imcap::test::run_cli(
      {"bench", "--json", "--smoke", "--device-figures", "--decode-batch", "5", "--threads", "1"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const json j = json::parse(r.out);
  CHECK(j["device"] == "cpu");
  // The keys bench/gpu_baseline.py prints for PyTorch eager, with the batch in the name.
  check_figure(j["encoder_images_per_s"], "float32_batch2");
  check_figure(j["encoder_images_per_s"], "bfloat16_batch2");
  check_figure(j["greedy_decode_ms"], "batch1");
  check_figure(j["greedy_decode_ms"], "batch5");
  check_figure(j["greedy_decode_eager_ms"], "batch5");
  CHECK(j["greedy_decode_cuda_graphs"] == false);  // on the CPU, never
  check_figure(j, "decoder_train_step_ms");
  CHECK(j["decoder_train_step_ms"]["tokens_per_step"] == 56);
  for (const char* k : {"arch", "image_size", "encoder_batch", "decode_batch", "train_batch",
                        "caption_len", "vocab", "embed", "hidden", "max_steps"}) {
    INFO(k);
    CHECK(j["config"].contains(k));
  }
  CHECK(j["config"]["decode_batch"] == 5);
  CHECK(j["env"].contains("cudnn_benchmark"));
  CHECK_FALSE(j.contains("data_pipeline_images_per_s"));
}

TEST_CASE("imcap bench runs selected parts and rejects unknown ones", "[bench][cli]") {
  auto r = imcap::test::run_cli(
      {"bench", "--json", "--smoke", "--only", "greedy,coco", "--threads", "1"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const json j = json::parse(r.out);
  check_figure(j, "greedy_decode_ms");
  check_figure(j, "vocabulary_build_ms");
  CHECK_FALSE(j.contains("encoder_ms_per_image"));
  CHECK_FALSE(j.contains("full_caption_ms"));
  // Without --json: a table.
  r = imcap::test::run_cli({"bench", "--smoke", "--only", "greedy", "--threads", "1"});
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("greedy_decode_ms"));
  r = imcap::test::run_cli({"bench", "--only", "encoder,warp"});
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains("'warp'"));
}
