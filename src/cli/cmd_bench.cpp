// imcap bench: the figures of ../shared/bench/python_baseline.py (same shapes, medians after
// warm-up, the same JSON keys), measured on imcap's own code paths, plus data loading with all
// threads, COCO annotation loading, the vocabulary build and peak memory. See
// docs/performance.md.
#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "cli/bench_attention.hpp"
#include "cli/bench_support.hpp"
#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "cli/train_defaults.hpp"
#include "detail/cuda_graph_greedy.hpp"
#include "detail/cuda_info.hpp"
#include "detail/fused_adam.hpp"
#include "detail/io.hpp"
#include "detail/memory.hpp"
#include "detail/resnet_inference.hpp"
#include "imcap/captioner.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/decoder.hpp"
#include "imcap/encoder.hpp"
#include "imcap/error.hpp"
#include "imcap/image.hpp"
#include "imcap/model.hpp"
#include "imcap/search.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/trainer.hpp"
#include "imcap/vocabulary.hpp"

namespace imcap::cli {

namespace {

using bench::Json;
using bench::Reps;

// The parts `--only` can select, in the order they run.
const std::vector<std::string> kParts = {"encoder", "greedy", "train",     "data",     "full",
                                         "coco",    "memory", "train_e2e", "attention"};

struct BenchArgs {
  bool json = false, quick = false, smoke = false;
  int threads = 0, blas_threads = -1, data_threads = 0;
  std::string annotations, jpeg_dir, arch = "resnet152", only, device = "cpu";
  bool device_figures = false;
  int encoder_batch = 256, decode_batch = 128;
  std::int64_t vocab = 10000, embed = 256, hidden = 512;
  int image_size = 224, train_batch = 128, caption_len = 14, jpegs = 64;
  int jpeg_width = 640, jpeg_height = 480, max_steps = 20;
  std::size_t memory_steps = 0;
  std::uint64_t seed = 0;
  bool head_bn = true;
  DecodeWeights decode_weights = DecodeWeights::kFloat32;
};

struct Plan {
  Reps enc_b1, enc_b8, greedy, train, pipe, full, coco, e2e;
};

Plan make_plan(const BenchArgs& a) {
  // The baseline's (warm-up, repetitions) per measurement; coco is imcap's own.
  // e2e: (warm-up steps, timed steps) of whole training runs.
  if (a.smoke) return {{0, 1}, {0, 1}, {0, 1}, {0, 1}, {0, 1}, {0, 1}, {0, 1}, {1, 2}};
  if (a.quick) return {{1, 3}, {1, 2}, {3, 10}, {1, 3}, {1, 2}, {1, 3}, {0, 1}, {10, 20}};
  return {{3, 15}, {2, 7}, {20, 100}, {3, 15}, {2, 7}, {3, 15}, {1, 3}, {40, 80}};
}

// The device figures' repetitions: bench/gpu_baseline.py's (PyTorch eager), so that both warm up
// alike.
struct DevicePlan {
  Reps encoder, greedy, train;
};

DevicePlan make_device_plan(const BenchArgs& a) {
  if (a.smoke) return {{0, 1}, {0, 1}, {0, 1}};
  if (a.quick) return {{2, 5}, {5, 20}, {5, 20}};
  return {{5, 20}, {20, 100}, {10, 50}};
}

Json reps_json(Reps r) { return Json::array({r.warmup, r.reps}); }

// Log lines go to stderr ("# ..." as the baseline's), so that stdout holds only the JSON.
template <typename... Args>
void note(fmt::format_string<Args...> format, Args&&... args) {
  std::cerr << "# " << fmt::format(format, std::forward<Args>(args)...) << '\n' << std::flush;
}

Vocabulary bench_vocabulary(std::int64_t size) {
  std::vector<std::string> tokens = {"<pad>", "<start>", "<end>", "<unk>"};
  for (std::int64_t i = 4; i < size; ++i) tokens.push_back(fmt::format("w{}", i));
  return Vocabulary::from_tokens(std::move(tokens));
}

// The baseline's model: the tutorial's EncoderCNN (frozen ResNet, Linear + BatchNorm1d head)
// and DecoderRNN (pre-inject, one LSTM layer).
ModelConfig bench_config(const BenchArgs& a) {
  ModelConfig c;
  c.encoder.arch = parse_resnet_arch(a.arch);
  c.encoder.embed_size = a.embed;
  c.encoder.head_batch_norm = a.head_bn;
  c.encoder.trainable_stages = 0;
  c.decoder.embed_size = a.embed;
  c.decoder.hidden_size = a.hidden;
  c.decoder.num_layers = 1;
  c.decoder.image_inject = ImageInject::kPre;
  c.image_crop = a.image_size;
  c.image_resize = train_defaults::image_resize(a.image_size, /*pretrained=*/true);
  return c;
}

Json measure_encoder(CaptionModel& model, const BenchArgs& a, const Plan& plan) {
  Json out;
  torch::NoGradGuard no_grad;
  model.train(false);
  for (const auto& [bs, reps] : {std::pair{1, plan.enc_b1}, std::pair{8, plan.enc_b8}}) {
    const auto x = torch::randn({bs, 3, a.image_size, a.image_size});
    const auto ts = bench::time_ms([&] { model.encoder()->forward(x); }, reps);
    out[fmt::format("batch{}", bs)] = bench::summarize(ts, 1.0 / bs);
    note("encoder batch {}: {:.1f} ms/image", bs, bench::median(ts) / bs);
  }
  return out;
}

Json measure_greedy(CaptionModel& model, const BenchArgs& a, const Plan& plan) {
  model.train(false);
  const auto features = torch::randn({1, a.embed});
  const DecoderStepper stepper(model.decoder(), a.decode_weights);
  SearchOptions opts;  // no <end>: all max_steps steps, as the notebook's sample()
  opts.max_length = a.max_steps;
  const auto ts = bench::time_ms([&] { greedy_search(stepper, features, opts); }, plan.greedy);
  note("greedy decode: {:.2f} ms", bench::median(ts));
  return bench::summarize(ts);
}

Json measure_train(CaptionModel& model, const BenchArgs& a, Reps reps, std::size_t memory_steps,
                   Json* memory) {
  Encoder& encoder = model.encoder();
  Decoder& decoder = model.decoder();
  model.train(true);
  // The decoder and the encoder's head train; the CNN is not run (features are precomputed).
  std::vector<torch::Tensor> params;
  for (auto& p : decoder->parameters()) params.push_back(p);
  for (auto& p : encoder->embed->parameters()) params.push_back(p);
  if (encoder->bn)
    for (auto& p : encoder->bn->parameters()) params.push_back(p);
  detail::FusedAdam adam(params, torch::optim::AdamOptions(1e-3));  // the Trainer's Adam
  const std::int64_t batch = a.train_batch, len = a.caption_len;
  const torch::Device device = model.device();
  const auto feats = torch::randn({batch, encoder->feature_dim()}).to(device);
  auto captions = torch::randint(4, a.vocab, {batch, len}, torch::kLong);
  captions.select(1, 0).fill_(model.vocab().start_id());
  captions.select(1, len - 1).fill_(model.vocab().end_id());
  captions = captions.to(device);
  const auto lengths = torch::full({batch}, len, torch::kLong).to(device);
  auto step = [&] {
    const auto features = encoder->embed_features(feats);
    const auto loss = decoder->loss(features, captions, lengths);
    adam.zero_grad();
    loss.backward();
    adam.step();
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  const auto ts = bench::time_ms(step, reps);
  Json out = bench::summarize(ts);
  out["tokens_per_step"] = batch * len;
  std::int64_t n = 0;
  for (const auto& p : params) n += p.numel();
  out["trainable_params"] = n;
  note("train step: {:.1f} ms", bench::median(ts));
  if (memory != nullptr && memory_steps > 0) {
    // Resident memory over a long run: it must not grow with the number of steps.
    Json rss = Json::object();
    for (std::size_t i = 1; i <= memory_steps; ++i) {
      step();
      if (i == 1 || i == 10 || i % 100 == 0 || i == memory_steps)
        rss[std::to_string(i)] =
            std::round(detail::to_mib(detail::current_rss_bytes()) * 10.0) / 10.0;
    }
    (*memory)["train_rss_mib_at_step"] = rss;
    note("train RSS (MiB) by step: {}", rss.dump());
  }
  model.train(false);
  return out;
}

// End-to-end training at `imcap train`'s defaults (the library options' own): whole Trainer steps
// on `imcap synth` JPEGs (128 px), data loading, decoding and the image cache included, for the
// two cases of docs/performance.md: ResNet-18 at 64 px training from scratch, and ResNet-50 at
// 224 px frozen (random weights shaped as the pretrained ones; the COCO recipe). Figures:
// captions per second over the timed steps, after the warm-up steps (the first epoch's decoding
// included in neither: the cache then holds every image, as from the second epoch of a run).
Json measure_train_e2e(const BenchArgs& a, Reps reps, const std::string& tmp) {
  namespace d = train_defaults;
  Json out;
  const std::string data_dir = detail::join_path(tmp, "e2e-data");
  SyntheticOptions so;
  so.train_images = a.smoke ? 24 : 400;
  so.val_images = 1;
  so.image_size = 128;
  so.seed = a.seed + 1;
  const auto files = generate_synthetic_dataset(data_dir, so);
  struct Case {
    const char* name;
    ResNetArch arch;
    int image_size;
    int trainable_stages;
  };
  const std::vector<Case> cases = {
      {"resnet18_64px_scratch", ResNetArch::kResNet18, a.smoke ? 32 : 64, kResNetStages},
      {"resnet50_224px_frozen", ResNetArch::kResNet50, a.smoke ? 32 : 224, 0}};
  for (const Case& c : cases) {
    ModelConfig config;  // the library's defaults, which are imcap train's
    config.encoder.arch = c.arch;
    if (a.smoke) config.encoder.embed_size = 8;
    config.encoder.trainable_stages = c.trainable_stages;
    if (a.smoke) config.decoder.hidden_size = 16;
    config.image_crop = c.image_size;
    config.image_resize = d::image_resize(c.image_size, /*pretrained=*/c.trainable_stages == 0);
    torch::manual_seed(a.seed);
    CaptionModel model(config, Vocabulary::build({files.train_annotations}, {/*threshold=*/1}));
    TransformOptions tf = model.eval_transform().options();
    tf.train = true;
    const CocoDataset train(files.train_annotations, files.train_images, model.vocab(),
                            ImageTransform(tf), CocoDatasetOptions{});
    TrainerOptions o;
    o.out_dir = detail::join_path(tmp, "e2e-run");
    o.progress = false;
    o.epochs = 1000;
    o.seed = a.seed + 1;
    // Warm-up: one epoch fills the image cache, then the warm-up steps; then the timed run.
    o.max_steps = std::max<std::size_t>(1, (train.size() + o.batch_size - 1) / o.batch_size) +
                  static_cast<std::size_t>(reps.warmup);
    Trainer(model, train, nullptr, o).fit();
    o.max_steps = static_cast<std::size_t>(reps.reps);
    const TrainResult r = Trainer(model, train, nullptr, o).fit();
    bench::remove_flat_dir(o.out_dir);
    const double rate = r.captions / std::max(1e-9, r.seconds);
    out[c.name] = {{"captions_per_s", rate},     {"steps", r.steps},
                   {"captions", r.captions},     {"seconds", r.seconds},
                   {"batch_size", o.batch_size}, {"batching", to_string(o.batching)}};
    note("train end to end, {}: {:.1f} captions/s ({} steps)", c.name, rate, r.steps);
  }
  for (const auto* dir : {"train", "val"}) bench::remove_flat_dir(detail::join_path(data_dir, dir));
  bench::remove_flat_dir(data_dir);
  return out;
}

// ---- Device figures (`--device cuda`): the GPU goals' shapes, timed after synchronising ----

void device_sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// Encoder throughput at a large batch, in float32 and bfloat16 (the folded inference path,
// channels_last on a GPU). Per repetition: images per second; max is the best.
Json measure_device_encoder(CaptionModel& model, const BenchArgs& a, Reps reps) {
  Json out;
  torch::NoGradGuard no_grad;
  model.train(false);
  const torch::Device device = model.device();
  const auto x = torch::randn({a.encoder_batch, 3, a.image_size, a.image_size}).to(device);
  for (const auto& [name, type] :
       {std::pair{"float32", torch::kFloat}, std::pair{"bfloat16", torch::kBFloat16}}) {
    const torch::Dtype dtype = type;  // a lambda cannot capture a structured binding in C++17
    const auto ts = bench::time_ms(
        [&] {
          model.encoder()->forward(x, dtype);
          device_sync(device);
        },
        reps);
    std::vector<double> rates;
    for (double t : ts) rates.push_back(1e3 * static_cast<double>(a.encoder_batch) / t);
    out[fmt::format("{}_batch{}", name, a.encoder_batch)] = bench::summarize(rates);
    note("encoder {} batch {}: {:.0f} images/s", name, a.encoder_batch, bench::median(rates));
  }
  return out;
}

// The seed's sample() (max_steps argmax steps, no stop at <end>) at batch 1 and decode_batch:
// from CUDA graphs where this build has them, and eagerly (DecoderStepper + greedy_search).
void measure_device_greedy(CaptionModel& model, const BenchArgs& a, Reps reps, Json& res) {
  model.train(false);
  const torch::Device device = model.device();
  SearchOptions opts;  // no special tokens: all max_steps steps, as the notebook's sample()
  opts.max_length = a.max_steps;
  const detail::CudaGraphGreedy graphed(model.decoder(), opts, SpecialTokens{});
  const DecoderStepper stepper(model.decoder(), a.decode_weights);
  Json graph_out, eager_out;
  for (const std::int64_t batch : {std::int64_t{1}, static_cast<std::int64_t>(a.decode_batch)}) {
    const auto features = torch::randn({batch, a.embed}).to(device);
    const auto key = fmt::format("batch{}", batch);
    const auto tg = bench::time_ms([&] { graphed(features); }, reps);
    const auto te = bench::time_ms(
        [&] {
          greedy_search(stepper, features, opts);  // ends with a copy to the host
        },
        reps);
    graph_out[key] = bench::summarize(tg);
    eager_out[key] = bench::summarize(te);
    note("greedy decode batch {}: {:.3f} ms ({}), {:.3f} ms eager", batch, bench::median(tg),
         graphed.graphs_captured() > 0 ? "CUDA graph" : "no graph", bench::median(te));
    if (batch == a.decode_batch) break;  // decode_batch 1
  }
  res["greedy_decode_ms"] = graph_out;
  res["greedy_decode_eager_ms"] = eager_out;
  res["greedy_decode_cuda_graphs"] = graphed.graphs_captured() > 0;
  if (!graphed.capture_error().empty())
    res["greedy_decode_capture_error"] = graphed.capture_error();
}

// Images per second of passes over the files, split between `threads` threads (after the
// warm-up passes).
Json measure_pipeline(const std::vector<std::string>& files, int threads, Reps reps, int resize,
                      int crop) {
  const ImageTransform train = ImageTransform::train(resize, crop);
  const DecodeOptions decode = train.fast_decode_options();
  int pass = 0;
  auto one_pass = [&] {
    ++pass;
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(threads));
    auto work = [&](int t) {
      try {
        std::mt19937_64 rng(static_cast<std::uint64_t>(pass * 1000 + t));
        for (std::size_t i = static_cast<std::size_t>(t); i < files.size();
             i += static_cast<std::size_t>(threads))
          train(decode_image(files[i], decode), rng);
      } catch (...) {
        errors[static_cast<std::size_t>(t)] = std::current_exception();
      }
    };
    if (threads == 1) {
      work(0);
    } else {
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) pool.emplace_back(work, t);
      for (auto& th : pool) th.join();
    }
    for (const auto& e : errors)
      if (e) std::rethrow_exception(e);
  };
  const auto ts = bench::time_ms(one_pass, reps);
  std::vector<double> rates;
  for (double t : ts) rates.push_back(static_cast<double>(files.size()) / (t / 1e3));
  Json out = bench::summarize(rates);
  out.erase("reps");
  out["passes"] = rates.size();
  out["images_per_pass"] = files.size();
  out["ms_per_image_median"] =
      std::round(bench::median(ts) / static_cast<double>(files.size()) * 1e3) / 1e3;
  return out;
}

// JPEG file to sentence; each repetition also times the encoder alone on a 224 px batch of one,
// right before, so that the ratio of the two shares the machine's conditions of the moment
// (memory bandwidth here varies by tens of percent from minute to minute).
void measure_full(const Captioner& captioner, CaptionModel& model, const BenchArgs& a,
                  const std::string& path, const Plan& plan, std::string* caption, Json& res) {
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({1, 3, a.image_size, a.image_size});
  std::vector<double> full, ratio;
  for (int i = 0; i < plan.full.warmup + plan.full.reps; ++i) {
    const double encoder = bench::time_ms([&] { model.encoder()->forward(x); }, {0, 1}).front();
    const double ms =
        bench::time_ms([&] { *caption = captioner.caption(path).text; }, {0, 1}).front();
    if (i < plan.full.warmup) continue;
    full.push_back(ms);
    ratio.push_back(ms / encoder);
  }
  note("full caption: {:.1f} ms, {:.3f} x the encoder's time", bench::median(full),
       bench::median(ratio));
  res["full_caption_ms"] = bench::summarize(full);
  res["full_caption_over_encoder"] = bench::summarize(ratio);
}

void measure_coco(const BenchArgs& a, const Plan& plan, const std::string& tmp, Json& res,
                  Json& config) {
  std::string file = a.annotations;
  if (file.empty()) {
    // COCO 2014 val's shape: 40,504 images with about 5 captions each.
    file = detail::join_path(tmp, "captions_synthetic.json");
    const int images = a.smoke ? 50 : 40504;
    const auto bytes = bench::write_coco_annotations(file, images, 5, 20000, a.seed);
    config["annotations"] =
        fmt::format("generated: {} images x 5 captions, {:.1f} MB", images, bytes / 1e6);
  } else {
    config["annotations"] = file;
  }
  std::size_t images = 0, captions = 0, words = 0;
  const auto load = bench::time_ms(
      [&] {
        const auto ann = CocoAnnotations::load(file);
        images = ann.images().size();
        captions = ann.captions().size();
      },
      plan.coco);
  const auto build = bench::time_ms([&] { words = Vocabulary::build({file}).size(); }, plan.coco);
  Json l = bench::summarize(load);
  l["images"] = images;
  l["captions"] = captions;
  Json b = bench::summarize(build);
  b["vocabulary_size"] = words;
  res["coco_annotations_load_ms"] = l;
  res["vocabulary_build_ms"] = b;
  note("COCO annotations: load {:.0f} ms, vocabulary build {:.0f} ms ({} captions)",
       bench::median(load), bench::median(build), captions);
}

void print_table(const Json& res) {
  auto row = [](const std::string& name, const Json& j, const char* unit) {
    fmt::print("{:<38} {:>10.3f} {:>10.3f} {:>10.3f}  {}\n", name, j.at("median").get<double>(),
               j.at("min").get<double>(), j.at("max").get<double>(), unit);
  };
  fmt::print("{:<38} {:>10} {:>10} {:>10}\n", "figure", "median", "min", "max");
  if (res.contains("encoder_ms_per_image")) {
    row("encoder_ms_per_image.batch1", res["encoder_ms_per_image"]["batch1"], "ms/image");
    row("encoder_ms_per_image.batch8", res["encoder_ms_per_image"]["batch8"], "ms/image");
  }
  const std::pair<const char*, const char*> keys[] = {
      {"greedy_decode_ms", "ms"},
      {"decoder_train_step_ms", "ms"},
      {"data_pipeline_images_per_s", "images/s, 1 thread"},
      {"data_pipeline_images_per_s_all_threads", "images/s, all threads"},
      {"full_caption_ms", "ms"},
      {"attention_train_step_ms", "ms"},
      {"coco_annotations_load_ms", "ms"},
      {"vocabulary_build_ms", "ms"}};
  for (const auto& [key, unit] : keys)
    if (res.contains(key)) row(key, res[key], unit);
  for (const char* key : {"attention_greedy_ms", "show_tell_greedy_ms"})
    if (res.contains(key))
      for (const auto& [name, j] : res[key].items()) row(fmt::format("{}.{}", key, name), j, "ms");
  if (res.contains("attention_step_vs_show_tell"))
    for (const auto& [name, j] : res["attention_step_vs_show_tell"].items())
      fmt::print("{:<38} {:>10.2f}\n", "attention_step_vs_show_tell." + name, j.get<double>());
  if (res.contains("train_e2e_captions_per_s"))
    for (const auto& [name, j] : res["train_e2e_captions_per_s"].items())
      fmt::print("{:<38} {:>10.1f} {:>10} {:>10}  captions/s, {} steps\n", "train_e2e." + name,
                 j.at("captions_per_s").get<double>(), "", "", j.at("steps").get<int>());
  if (res.contains("memory"))
    fmt::print("peak RSS {:.1f} MiB\n", res["memory"]["peak_rss_mib"].get<double>());
  fmt::print("benchmark wall time {:.1f} s\n", res["benchmark_wall_s"].get<double>());
}

// The device figure set (`--device`, `--device-figures`): encoder throughput, batched greedy
// decoding and the training step, in the shapes of the GPU goals (docs/performance.md#gpu).
void run_device_bench(const BenchArgs& a, CaptionModel& model, const torch::Device& device,
                      Json env, std::chrono::steady_clock::time_point start) {
  model.to(device);
  const DevicePlan plan = make_device_plan(a);
  env["device"] = device.str();
  env["cudnn_benchmark"] = at::globalContext().benchmarkCuDNN();
  env["cuda_graphs_built"] = detail::CudaGraphGreedy::available();
  note("device {}: encoder batch {}, decode batch {}, train batch {}", device.str(),
       a.encoder_batch, a.decode_batch, a.train_batch);
  Json res;
  bool failed = false;
  res["device"] = device.str();
  res["gpu"] = device.is_cuda() ? detail::cuda_device_name(device.has_index() ? device.index() : 0)
                                : std::string("cpu");
  res["torch_version"] = TORCH_VERSION;
  // A figure that fails is reported as {"error": ...}, and the others are still measured: one run
  // on a lent GPU must not lose them all.
  auto figure = [&](const char* key, const std::function<void()>& measure) {
    try {
      measure();
    } catch (const std::exception& e) {
      note("{} failed: {}", key, e.what());
      res[key] = Json{{"error", e.what()}};
      failed = true;
    }
  };
  figure("encoder_images_per_s", [&] {
    res["encoder_images_per_s"] = measure_device_encoder(model, a, plan.encoder);
    const ResNet& backbone = model.encoder()->backbone;
    res["encoder_fused_cudnn"] = {
        {"float32", backbone->inference_engine().fused(torch::kFloat)},
        {"bfloat16", backbone->inference_engine().fused(torch::kBFloat16)}};
  });
  figure("greedy_decode_ms", [&] { measure_device_greedy(model, a, plan.greedy, res); });
  figure("decoder_train_step_ms",
         [&] { res["decoder_train_step_ms"] = measure_train(model, a, plan.train, 0, nullptr); });
  res["benchmark_wall_s"] =
      std::round(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() *
                 10) /
      10;
  Json config;
  config["arch"] = a.arch;
  config["image_size"] = a.image_size;
  config["encoder_batch"] = a.encoder_batch;
  config["decode_batch"] = a.decode_batch;
  config["train_batch"] = a.train_batch;
  config["caption_len"] = a.caption_len;
  config["vocab"] = a.vocab;
  config["embed"] = a.embed;
  config["hidden"] = a.hidden;
  config["max_steps"] = a.max_steps;
  config["encoder"] = "folded batch norm, channels_last on a GPU";
  // (warm-up, repetitions) per figure.
  config["reps"] = {{"encoder", reps_json(plan.encoder)},
                    {"greedy", reps_json(plan.greedy)},
                    {"train", reps_json(plan.train)}};
  res["config"] = config;
  res["env"] = env;
  if (a.json) {
    std::cout << res.dump(1) << '\n';
  } else {
    for (const char* key : {"encoder_images_per_s", "greedy_decode_ms"}) {
      for (const auto& [name, j] : res[key].items()) {
        if (j.is_object() && j.contains("median"))
          fmt::print("{} {:<20} {:>10.3f}\n", key, name, j["median"].get<double>());
      }
    }
    if (res["decoder_train_step_ms"].contains("median"))
      fmt::print("decoder_train_step_ms {:<20} {:>10.3f}\n", "",
                 res["decoder_train_step_ms"]["median"].get<double>());
  }
  if (failed) throw Error("imcap bench: some device figures failed (see above)");
}

void run_bench(BenchArgs a) {
  if (a.smoke) {
    a.arch = "resnet18";
    a.image_size = 32;
    a.vocab = 50;
    a.embed = 8;
    a.hidden = 16;
    a.train_batch = 4;
    // The device figures' batches, unless given.
    if (a.encoder_batch == BenchArgs{}.encoder_batch) a.encoder_batch = 2;
    if (a.decode_batch == BenchArgs{}.decode_batch) a.decode_batch = 3;
    a.jpegs = 4;
    a.jpeg_width = 80;
    a.jpeg_height = 60;
    a.max_steps = 5;
  }
  std::vector<std::string> parts = kParts;
  if (!a.only.empty()) {
    parts.clear();
    std::stringstream in(a.only);
    std::string p;
    while (std::getline(in, p, ',')) {
      if (std::find(kParts.begin(), kParts.end(), p) == kParts.end())
        throw UsageError(fmt::format("--only '{}': expected a comma-separated list of {}", p,
                                     fmt::join(kParts, ", ")));
      parts.push_back(p);
    }
  }
  auto wanted = [&](const char* part) {
    return std::find(parts.begin(), parts.end(), part) != parts.end();
  };
  set_threads(a.threads, a.blas_threads);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int data_threads = a.data_threads > 0 ? a.data_threads : cores;
  torch::manual_seed(static_cast<std::uint64_t>(a.seed));
  const Plan plan = make_plan(a);
  Json env = bench::environment();
  env["threads_flag"] = a.threads;
  env["blas_threads_flag"] = a.blas_threads;
  env["quick"] = a.quick;
  const Json blas = env["openblas"];
  note("imcap {}, LibTorch {}, torch threads {}, OpenBLAS threads {}, OpenBLAS kernels {}{}",
       env["imcap"].get<std::string>(), env["torch"].get<std::string>(), torch::get_num_threads(),
       cpu_threads().blas, blas.is_object() ? blas["corename"].get<std::string>() : "(not OpenBLAS)",
       blas.is_object() && blas["OPENBLAS_CORETYPE"].is_string()
           ? fmt::format(" (OPENBLAS_CORETYPE={})", blas["OPENBLAS_CORETYPE"].get<std::string>())
           : "");

  const auto t0 = std::chrono::steady_clock::now();
  const std::string tmp = bench::make_temp_dir("imcap-bench-");
  struct Cleanup {
    std::string dir;
    ~Cleanup() { bench::remove_flat_dir(dir); }
  } cleanup{tmp};

  auto model = std::make_shared<CaptionModel>(bench_config(a), bench_vocabulary(a.vocab));
  model->train(false);
  const torch::Device device = parse_device(a.device);
  if (!device.is_cpu() || a.device_figures) {
    run_device_bench(a, *model, device, env, t0);
    return;
  }
  Json res, memory;
  memory["rss_mib_model_built"] = std::round(detail::to_mib(detail::current_rss_bytes()) * 10) / 10;

  if (wanted("encoder")) res["encoder_ms_per_image"] = measure_encoder(*model, a, plan);
  if (wanted("greedy")) res["greedy_decode_ms"] = measure_greedy(*model, a, plan);
  if (wanted("train") || (wanted("memory") && a.memory_steps > 0))
    res["decoder_train_step_ms"] =
        measure_train(*model, a, plan.train, wanted("memory") ? a.memory_steps : 0, &memory);

  std::vector<std::string> files;
  if (wanted("data") || wanted("full")) {
    if (!a.jpeg_dir.empty()) {
      files = bench::list_jpegs(a.jpeg_dir);
      if (files.empty())
        throw InvalidArgument(fmt::format("--jpeg-dir {}: no .jpg files", a.jpeg_dir));
    } else {
      files = bench::write_photo_jpegs(tmp, a.jpegs, a.jpeg_width, a.jpeg_height, a.seed);
    }
  }
  const int resize = bench_config(a).image_resize, crop = a.image_size;
  if (wanted("data")) {
    res["data_pipeline_images_per_s"] = measure_pipeline(files, 1, plan.pipe, resize, crop);
    note("data pipeline: {:.1f} images/s",
         res["data_pipeline_images_per_s"]["median"].get<double>());
    Json all = measure_pipeline(files, data_threads, plan.pipe, resize, crop);
    all["threads"] = data_threads;
    res["data_pipeline_images_per_s_all_threads"] = all;
    note("data pipeline, {} threads: {:.1f} images/s", data_threads, all["median"].get<double>());
  }
  std::string caption;
  if (wanted("full")) {
    CaptionOptions co;
    co.beam_size = 1;
    co.max_length = a.max_steps;
    co.forbid_unk = false;  // the baseline's sample() masks nothing
    co.decode_weights = a.decode_weights;
    const Captioner captioner(model, co);
    measure_full(captioner, *model, a, files.front(), plan, &caption, res);
  }
  Json config;
  config["cnn"] = fmt::format("{} (random init), frozen, eval", a.arch);
  config["encoder_head_bn"] = a.head_bn;
  config["vocab"] = a.vocab;
  config["embed"] = a.embed;
  config["hidden"] = a.hidden;
  config["lstm_layers"] = 1;
  config["max_decode_steps"] = a.max_steps;
  config["decode_weights"] = to_string(a.decode_weights);
  config["train_batch"] = a.train_batch;
  config["caption_len"] = a.caption_len;
  config["optimizer"] = "Adam(lr=1e-3)";
  config["input"] = fmt::format("{}x{}", a.image_size, a.image_size);
  config["jpegs"] = a.jpeg_dir.empty() ? fmt::format("{} generated {}x{}, q90", files.size(),
                                                     a.jpeg_width, a.jpeg_height)
                                       : fmt::format("{} from {}", files.size(), a.jpeg_dir);
  config["full_caption_transform"] =
      fmt::format("Resize({})+CenterCrop({})+ToTensor+Normalize", resize, crop);
  config["reps_warmup"] = {{"enc_b1", reps_json(plan.enc_b1)}, {"enc_b8", reps_json(plan.enc_b8)},
                           {"greedy", reps_json(plan.greedy)}, {"train", reps_json(plan.train)},
                           {"pipe", reps_json(plan.pipe)},     {"full", reps_json(plan.full)},
                           {"coco", reps_json(plan.coco)},     {"train_e2e", reps_json(plan.e2e)}};
  if (wanted("coco")) measure_coco(a, plan, tmp, res, config);
  if (wanted("train_e2e")) {
    res["train_e2e_captions_per_s"] = measure_train_e2e(a, plan.e2e, tmp);
    const TrainerOptions t;
    const ModelConfig m;
    config["train_e2e"] = fmt::format(
        "imcap train defaults: {} batches of {} captions, {}-inject, E {}, H {}, {} {:g}, "
        "{} workers, image cache {} MiB; synthetic 128-px JPEGs",
        to_string(t.batching), t.batch_size, to_string(m.decoder.image_inject),
        m.encoder.embed_size, m.decoder.hidden_size, to_string(t.optimizer), t.lr, t.workers,
        CocoDatasetOptions{}.cache_bytes >> 20);
  }
  if (wanted("attention")) {
    bench::AttentionShape shape;
    shape.vocab = a.vocab;
    shape.hidden = a.hidden;
    shape.decode_batch = a.decode_batch;
    shape.train_batch = a.train_batch;
    shape.caption_len = a.caption_len;
    shape.max_steps = a.max_steps;
    shape.seed = a.seed;
    if (a.smoke) {
      shape.embed = shape.attention_dim = a.embed;
      shape.encoder_dim = 24;
      shape.cells = 4;
    }
    const Json figures =
        bench::measure_attention(shape, plan.enc_b1, plan.enc_b1, model->decoder());
    for (const auto& [key, j] : figures.items()) res[key] = j;
  }
  if (!caption.empty()) config["full_caption_example"] = caption;
  res["benchmark_wall_s"] =
      std::round(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() *
                 10) /
      10;
  memory["peak_rss_mib"] = std::round(detail::to_mib(detail::peak_rss_bytes()) * 10) / 10;
  memory["rss_mib_end"] = std::round(detail::to_mib(detail::current_rss_bytes()) * 10) / 10;
  res["memory"] = memory;
  res["config"] = config;
  res["env"] = env;
  if (a.json)
    std::cout << res.dump(1) << '\n';
  else
    print_table(res);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  auto* cmd = app.add_subcommand(
      "bench", "Measure encoder, decoding, training step, data pipeline and captioning speed");
  cmd->add_flag("--json", a->json,
                "Print one JSON object with the keys of ../shared/bench/python_baseline.py");
  cmd->add_flag("--quick", a->quick, "Fewer repetitions (under a minute)");
  add_thread_options(cmd, a->threads, a->blas_threads);
  cmd->add_option("--data-threads", a->data_threads,
                  "Threads of the all-threads data pipeline figure (0: one per core)")
      ->capture_default_str()
      ->check(thread_count());
  cmd->add_option("--annotations", a->annotations,
                  "COCO captions file to time loading and the vocabulary build on (default: a "
                  "generated file of COCO 2014 val's size)");
  cmd->add_option(
      "--jpeg-dir", a->jpeg_dir,
      "Use the .jpg files of this folder (e.g. the baseline's) instead of generated ones");
  cmd->add_option("--only", a->only,
                  "Comma-separated parts to run: " + fmt::format("{}", fmt::join(kParts, ", ")));
  cmd->add_option("--memory-steps", a->memory_steps,
                  "With the memory part: run this many training steps and report the RSS by step")
      ->capture_default_str();
  cmd->add_option("--encoder", a->arch, "CNN")->capture_default_str()->check(one_of<ResNetArch>());
  cmd->add_option("--vocab", a->vocab, "Vocabulary size")
      ->capture_default_str()
      ->check(CLI::Range(8, 1 << 24));
  cmd->add_option("--embed", a->embed, "Embedding size")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--hidden", a->hidden, "LSTM hidden size")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd->add_flag("!--no-bn", a->head_bn, "Encoder head without BatchNorm1d");
  cmd->add_option("--seed", a->seed, "Random seed")->capture_default_str();
  add_decode_weights_option(cmd, a->decode_weights);
  cmd->add_option("--device", a->device,
                  "cpu, cuda or cuda:N; other than cpu, measures the device figures")
      ->capture_default_str();
  cmd->add_flag("--device-figures", a->device_figures,
                "Measure the device figures (encoder throughput, batched greedy decoding, "
                "training step) even on the CPU");
  cmd->add_option("--image-size", a->image_size, "Side of the encoder's input, pixels")
      ->capture_default_str()
      ->check(CLI::Range(32, 1024));
  cmd->add_option("--encoder-batch", a->encoder_batch, "Device figures: encoder batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--decode-batch", a->decode_batch, "Device figures: greedy decoding batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--train-batch", a->train_batch, "Training step: captions per batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  // Tiny shapes (ResNet-18 at 32 px, vocabulary 50, one repetition): checks that every part
  // runs and the output's shape, in seconds. For tests.
  cmd->add_flag("--smoke", a->smoke)->group("");
  cmd->callback([a] { run_bench(*a); });
}

}  // namespace imcap::cli
