// imcap demo: the main job on its built-in default. Generates a synthetic captioning dataset,
// trains a small CNN + LSTM from scratch on the CPU, captions the held-out images, scores them
// and writes an HTML report.
#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <thread>

#include <fmt/format.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "detail/io.hpp"
#include "imcap/captioner.hpp"
#include "imcap/metrics.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/trainer.hpp"

namespace imcap::cli {

namespace {

struct DemoArgs {
  std::string out = "imcap-demo";
  bool quick = false;
  double seconds = 0;  // 0: the default budget
  int threads = 0, blas_threads = -1;
  int image_size = 32;  // the CNN's input: 64-pixel scenes downscaled, 4x cheaper than 64
  std::uint64_t seed = 1;
};

std::string base64(const std::string& bytes) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const auto n = (static_cast<unsigned char>(bytes[i]) << 16) |
                   (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                   static_cast<unsigned char>(bytes[i + 2]);
    out += {k[(n >> 18) & 63], k[(n >> 12) & 63], k[(n >> 6) & 63], k[n & 63]};
  }
  if (i + 1 == bytes.size()) {
    const auto n = static_cast<unsigned char>(bytes[i]) << 16;
    out += {k[(n >> 18) & 63], k[(n >> 12) & 63], '=', '='};
  } else if (i + 2 == bytes.size()) {
    const auto n = (static_cast<unsigned char>(bytes[i]) << 16) |
                   (static_cast<unsigned char>(bytes[i + 1]) << 8);
    out += {k[(n >> 18) & 63], k[(n >> 12) & 63], k[(n >> 6) & 63], '='};
  }
  return out;
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (const char c : s) {
    switch (c) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

// The training loss per step as an SVG line chart.
std::string loss_svg(const std::vector<double>& losses) {
  const int w = 640, h = 240, pad = 36;
  if (losses.empty()) return "<p>no training steps</p>";
  const double hi = *std::max_element(losses.begin(), losses.end());
  const double lo = std::min(0.0, *std::min_element(losses.begin(), losses.end()));
  std::string pts;
  const std::size_t n = losses.size(), stride = std::max<std::size_t>(1, n / 600);
  for (std::size_t i = 0; i < n; i += stride) {
    const double x =
        pad + (w - 2 * pad) * (n == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(n - 1));
    const double y = h - pad - (h - 2 * pad) * (losses[i] - lo) / std::max(1e-9, hi - lo);
    pts += fmt::format("{:.1f},{:.1f} ", x, y);
  }
  return fmt::format(
      "<svg xmlns='http://www.w3.org/2000/svg' width='{0}' height='{1}' viewBox='0 0 {0} {1}'>"
      "<rect width='100%' height='100%' fill='white' stroke='#ccc'/>"
      "<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='{2}'/>"
      "<text x='{3}' y='{4}' font-size='12'>{5:.2f}</text><text x='{3}' y='{6}' "
      "font-size='12'>{7:.2f}</text>"
      "<text x='{8}' y='{6}' font-size='12' text-anchor='end'>step {9}</text></svg>",
      w, h, pts, 2, pad, hi, h - pad + 14, lo, w - pad, n);
}

void run_demo(const DemoArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  set_threads(a.threads, a.blas_threads);
  SyntheticOptions so;
  so.train_images = a.quick ? 600 : 4000;
  so.val_images = a.quick ? 60 : 300;
  so.image_size = 64;
  so.seed = a.seed;
  fmt::print("[1/4] writing a synthetic dataset of {} + {} images to {}\n", so.train_images,
             so.val_images, detail::join_path(a.out, "data"));
  const auto data = generate_synthetic_dataset(detail::join_path(a.out, "data"), so);

  ModelConfig config;
  config.encoder.arch = ResNetArch::kResNet18;
  config.encoder.embed_size = 128;
  config.encoder.trainable_stages = kResNetStages;
  config.decoder.hidden_size = 256;
  config.decoder.image_inject = ImageInject::kPar;
  config.image_resize = a.image_size;
  config.image_crop = a.image_size;
  torch::manual_seed(a.seed);
  auto model = std::make_shared<CaptionModel>(
      config, Vocabulary::build({data.train_annotations}, {/*threshold=*/1}));
  // No flips: the captions say which shape is on the left.
  TransformOptions tf = model->eval_transform().options();
  tf.train = true;
  tf.flip_probability = 0.0;
  CocoDataset train(data.train_annotations, data.train_images, model->vocab(), ImageTransform(tf));
  CocoDataset val(data.val_annotations, data.val_images, model->vocab(), model->eval_transform());

  TrainerOptions o;
  o.out_dir = detail::join_path(a.out, "model");
  o.epochs = 1000;
  o.max_seconds = a.seconds > 0 ? a.seconds : (a.quick ? 25.0 : 200.0);
  o.batch_size = 100;
  o.batching = BatchMode::kImageMajor;
  o.lr = 2e-3;
  o.seed = a.seed;
  o.val_max_images = 100;
  o.log_interval = 25;
  fmt::print("[2/4] training ResNet-18 + LSTM from scratch for {:.0f} s on {} captions\n",
             o.max_seconds, train.size());
  Trainer trainer(*model, train, &val, o);
  Trainer::install_signal_handlers();
  const auto r = trainer.fit();

  fmt::print("[3/4] captioning {} held-out images\n", val.num_images());
  model->train(false);
  Captioner captioner(model, CaptionOptions{});
  std::map<std::int64_t, std::vector<std::string>> refs;
  std::map<std::int64_t, std::string> cands;
  std::vector<std::string> paths;
  for (const auto id : val.image_ids()) paths.push_back(val.image_path(id));
  std::vector<Caption> captions;
  for (std::size_t i = 0; i < paths.size(); i += 64) {
    const std::vector<std::string> chunk(
        paths.begin() + static_cast<std::ptrdiff_t>(i),
        paths.begin() + static_cast<std::ptrdiff_t>(std::min(paths.size(), i + 64)));
    for (auto& c : captioner.caption_batch(chunk)) captions.push_back(std::move(c));
  }
  for (std::size_t i = 0; i < val.image_ids().size(); ++i) {
    const auto id = val.image_ids()[i];
    refs[id] = val.references(id);
    cands[id] = captions[i].text;
  }
  const auto scores = evaluate_captions(refs, cands);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("\nheld-out ({} images): BLEU-4 {:.3f}  CIDEr {:.3f}  BLEU-1 {:.3f}  ROUGE-L {:.3f}\n",
             cands.size(), scores.corpus.bleu[3], scores.corpus.cider, scores.corpus.bleu[0],
             scores.corpus.rouge_l);
  fmt::print("{} training steps in {:.0f} s; total {:.0f} s\n\nexamples:\n", r.steps, r.seconds,
             total);
  for (std::size_t i = 0; i < std::min<std::size_t>(5, captions.size()); ++i)
    fmt::print("  {}\n    imcap:     {}\n    reference: {}\n", detail::file_name(paths[i]),
               captions[i].text, refs[val.image_ids()[i]].front());

  std::string html = fmt::format(
      "<!doctype html><html><head><meta charset='utf-8'><title>imcap demo</title><style>"
      "body{{font-family:sans-serif;margin:2em}}td{{padding:4px 12px;vertical-align:top}}"
      "img{{width:96px;image-rendering:pixelated}}.gen{{font-weight:bold}}</style></head><body>"
      "<h1>imcap demo</h1><p>ResNet-18 + LSTM ({} inject) trained from scratch for {:.0f} s ({} "
      "steps) on {} "
      "synthetic images; {} held-out images, beam 3.</p>"
      "<table><tr><th>BLEU-1</th><th>BLEU-4</th><th>ROUGE-L</th><th>CIDEr</th></tr>"
      "<tr><td>{:.3f}</td><td>{:.3f}</td><td>{:.3f}</td><td>{:.3f}</td></tr></table>"
      "<h2>Training loss</h2>{}<h2>Held-out captions</h2><table>",
      to_string(config.decoder.image_inject), r.seconds, r.steps, so.train_images, cands.size(),
      scores.corpus.bleu[0], scores.corpus.bleu[3], scores.corpus.rouge_l, scores.corpus.cider,
      loss_svg(r.losses));
  for (std::size_t i = 0; i < std::min<std::size_t>(40, captions.size()); ++i) {
    const auto id = val.image_ids()[i];
    std::string refs_html;
    for (const auto& ref : refs[id]) refs_html += "<br>" + html_escape(ref);
    html += fmt::format(
        "<tr><td><img src='data:image/jpeg;base64,{}'></td><td><span "
        "class='gen'>{}</span>{}</td></tr>",
        base64(detail::read_file(paths[i])), html_escape(captions[i].text), refs_html);
  }
  html += "</table></body></html>\n";
  const auto report = detail::join_path(a.out, "report.html");
  write_output_file(report, html);
  const auto best = detail::join_path(o.out_dir, "best.imcap");
  fmt::print("[4/4] wrote {} and {}\n", report,
             detail::path_exists(best) ? best : detail::join_path(o.out_dir, "last.imcap"));
}

}  // namespace

void add_demo_command(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  auto* cmd = app.add_subcommand(
      "demo", "Generate a synthetic dataset, train on it from scratch, caption and score");
  cmd->add_option("--out", a->out, "Folder for the dataset, the model and report.html")
      ->capture_default_str();
  cmd->add_flag("--quick", a->quick, "A small run of under a minute (for tests)");
  cmd->add_option("--seconds", a->seconds, "Training time budget (default 200, or 25 with --quick)")
      ->check(finite_range(0.0, 1e7));
  cmd->add_option("--image-size", a->image_size, "Side of the images the CNN sees, pixels")
      ->capture_default_str()
      ->check(CLI::Range(16, 64));
  add_thread_options(cmd, a->threads, a->blas_threads);
  cmd->add_option("--seed", a->seed, "Random seed")->capture_default_str();
  cmd->callback([a] { run_demo(*a); });
}

}  // namespace imcap::cli
