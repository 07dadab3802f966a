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
#include "cli/pictures.hpp"
#include "cli/train_defaults.hpp"
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
  double seconds = 0;        // 0: the default budget
  double scst_share = 0.25;  // of the budget, self-critical training after cross-entropy
  int threads = 0, blas_threads = -1;
  int image_size = 0;  // 0: 32 (64-pixel scenes downscaled, 4x cheaper), 64 for attention
  DecoderKind decoder = DecoderKind::kShowTell;
  std::uint64_t seed = 1;
};

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

// The held-out images captioned by `model` (beam 3, the Captioner's default) and scored.
struct HeldOut {
  std::vector<Caption> captions;
  CorpusScores scores;
};

HeldOut caption_held_out(const std::shared_ptr<CaptionModel>& model, const CocoDataset& val,
                         const std::vector<std::string>& paths) {
  model->train(false);
  CaptionOptions options;
  options.attention_weights = model->decoder_kind() == DecoderKind::kAttention;
  Captioner captioner(model, options);
  HeldOut out;
  for (std::size_t i = 0; i < paths.size(); i += 64) {
    const std::vector<std::string> chunk(
        paths.begin() + static_cast<std::ptrdiff_t>(i),
        paths.begin() + static_cast<std::ptrdiff_t>(std::min(paths.size(), i + 64)));
    for (auto& c : captioner.caption_batch(chunk)) out.captions.push_back(std::move(c));
  }
  std::map<std::int64_t, std::vector<std::string>> refs;
  std::map<std::int64_t, std::string> cands;
  for (std::size_t i = 0; i < val.image_ids().size(); ++i) {
    const auto id = val.image_ids()[i];
    refs[id] = val.references(id);
    cands[id] = out.captions[i].text;
  }
  out.scores = evaluate_captions(refs, cands);
  return out;
}

// A run's best.imcap, or its last.imcap when it never validated.
std::string best_or_last(const std::string& dir) {
  const auto best = detail::join_path(dir, "best.imcap");
  return detail::path_exists(best) ? best : detail::join_path(dir, "last.imcap");
}

// The number of grid cells an attention model chose from (0 when it gave no weights).
std::int64_t attention_cells(const HeldOut& held_out) {
  for (const auto& c : held_out.captions)
    if (c.attention.defined()) return c.attention.size(1);
  return 0;
}

void print_scores(const char* what, std::size_t images, const CaptionScores& s) {
  fmt::print(
      "held-out ({} images), {}: BLEU-4 {:.3f}  CIDEr {:.3f}  BLEU-1 {:.3f}  ROUGE-L {:.3f}\n",
      images, what, s.bleu[3], s.cider, s.bleu[0], s.rouge_l);
}

void run_demo(const DemoArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  set_threads(a.threads, a.blas_threads);
  SyntheticOptions so;
  so.train_images = a.quick ? 600 : 4000;
  so.val_images = a.quick ? 60 : 300;
  so.image_size = 64;
  so.seed = a.seed;
  fmt::print("[1/5] writing a synthetic dataset of {} + {} images to {}\n", so.train_images,
             so.val_images, detail::join_path(a.out, "data"));
  const auto data = generate_synthetic_dataset(detail::join_path(a.out, "data"), so);

  ModelConfig config;
  config.encoder.arch = ResNetArch::kResNet18;
  config.encoder.embed_size = 128;
  config.encoder.trainable_stages = kResNetStages;
  config.decoder.hidden_size = 256;
  config.decoder.image_inject = ImageInject::kPar;
  config.decoder_kind = a.decoder;
  config.attention.embed_size = 128;  // the same sizes as the Show-and-Tell demo's
  config.attention.hidden_size = 256;
  config.attention.attention_dim = 128;
  // ResNet-18 maps 32 pixels to one cell; 64 gives attention a 2 x 2 grid to choose from.
  const int image_size =
      a.image_size > 0 ? a.image_size : (a.decoder == DecoderKind::kAttention ? 64 : 32);
  config.image_resize = image_size;
  config.image_crop = image_size;
  torch::manual_seed(a.seed);
  auto model = std::make_shared<CaptionModel>(
      config, Vocabulary::build({data.train_annotations}, {/*threshold=*/1}));
  // No flips: the captions say which shape is on the left.
  TransformOptions tf = model->eval_transform().options();
  tf.train = true;
  tf.flip_probability = 0.0;
  CocoDataset train(data.train_annotations, data.train_images, model->vocab(), ImageTransform(tf));
  CocoDataset val(data.val_annotations, data.val_images, model->vocab(), model->eval_transform());
  std::vector<std::string> paths;
  for (const auto id : val.image_ids()) paths.push_back(val.image_path(id));

  // The budget is shared: cross-entropy first, then self-critical training from its best model.
  const double budget = a.seconds > 0 ? a.seconds : (a.quick ? 25.0 : 200.0);
  const double scst_seconds = budget * a.scst_share;
  TrainerOptions o;
  o.out_dir = detail::join_path(a.out, "model");
  o.epochs = 1000;
  o.max_seconds = budget - scst_seconds;
  o.batch_size = 100;
  o.batching = BatchMode::kImageMajor;
  o.lr = 2e-3;
  o.seed = a.seed;
  o.val_max_images = 100;
  o.log_interval = 25;
  fmt::print("[2/5] training ResNet-18 + {} from scratch for {:.0f} s on {} captions\n",
             a.decoder == DecoderKind::kAttention ? "attention LSTM" : "LSTM", o.max_seconds,
             train.size());
  Trainer::install_signal_handlers();
  const auto r = Trainer(*model, train, &val, o).fit();
  const auto xe_file = best_or_last(o.out_dir);

  fmt::print("[3/5] captioning {} held-out images\n", val.num_images());
  auto xe_model = std::make_shared<CaptionModel>(CaptionModel::load(xe_file));
  const HeldOut xe = caption_held_out(xe_model, val, paths);
  print_scores("cross-entropy", paths.size(), xe.scores.corpus);

  HeldOut final_out = xe;
  TrainResult rs;
  std::string final_file = xe_file;
  if (scst_seconds > 0) {
    TrainerOptions s = o;
    s.out_dir = detail::join_path(a.out, "model-scst");
    s.objective = Objective::kScst;
    s.lr = train_defaults::kScstLearningRate;
    s.max_seconds = scst_seconds;
    s.log_interval = 10;
    fmt::print(
        "[4/5] self-critical training (SCST: {} samples per image, {} baseline, CIDEr-D "
        "reward{}) from {} for {:.0f} s\n",
        s.scst.samples, to_string(s.scst.baseline), describe_xe_weight(s.scst.xe_weight), xe_file,
        s.max_seconds);
    auto scst_model = std::make_shared<CaptionModel>(CaptionModel::load(xe_file));
    rs = Trainer(*scst_model, train, &val, s).fit();
    final_file = best_or_last(s.out_dir);
    final_out = caption_held_out(std::make_shared<CaptionModel>(CaptionModel::load(final_file)),
                                 val, paths);
    print_scores("after SCST", paths.size(), final_out.scores.corpus);
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("\ncross-entropy: {} steps in {:.0f} s", r.steps, r.seconds);
  if (scst_seconds > 0) fmt::print("; SCST: {} steps in {:.0f} s", rs.steps, rs.seconds);
  fmt::print("; total {:.0f} s\n\nexamples:\n", total);
  for (std::size_t i = 0; i < std::min<std::size_t>(5, paths.size()); ++i)
    fmt::print("  {}\n    imcap:     {}\n    reference: {}\n", detail::file_name(paths[i]),
               final_out.captions[i].text, val.references(val.image_ids()[i]).front());

  const auto row = [](const char* name, const CaptionScores& c) {
    return fmt::format(
        "<tr><td>{}</td><td>{:.3f}</td><td>{:.3f}</td><td>{:.3f}</td><td>{:.3f}</td></tr>", name,
        c.bleu[0], c.bleu[3], c.rouge_l, c.cider);
  };
  std::string table = row("cross-entropy", xe.scores.corpus);
  if (scst_seconds > 0) table += row("+ SCST", final_out.scores.corpus);
  std::string html = fmt::format(
      "<!doctype html><html><head><meta charset='utf-8'><title>imcap demo</title><style>"
      "body{{font-family:sans-serif;margin:2em}}td{{padding:4px 12px;vertical-align:top}}"
      "img{{width:96px;image-rendering:pixelated}}.gen{{font-weight:bold}}.xe{{color:#666}}"
      ".att{{display:flex;flex-wrap:wrap;margin-top:6px}}figure{{margin:0 6px 6px 0;"
      "font-size:13px}}</style></head><body>"
      "<h1>imcap demo</h1><p>ResNet-18 + {} trained from scratch on {} synthetic "
      "images: cross-entropy for {:.0f} s ({} steps){}; {} held-out images, beam 3.</p>"
      "<table><tr><th>training</th><th>BLEU-1</th><th>BLEU-4</th><th>ROUGE-L</th>"
      "<th>CIDEr</th></tr>{}</table>"
      "<h2>Training loss (cross-entropy)</h2>{}<h2>Held-out captions</h2><table>",
      a.decoder == DecoderKind::kAttention
          ? fmt::format("a soft-attention LSTM (Show, Attend and Tell) over the CNN's {} cells",
                        attention_cells(final_out))
          : fmt::format("LSTM ({} inject)", to_string(config.decoder.image_inject)),
      so.train_images, r.seconds, r.steps,
      scst_seconds > 0
          ? fmt::format(", then self-critical (SCST) for {:.0f} s ({} steps)", rs.seconds, rs.steps)
          : std::string(),
      paths.size(), table, loss_svg(r.losses));
  std::size_t drawn = 0;
  for (std::size_t i = 0; i < std::min<std::size_t>(40, paths.size()); ++i) {
    const auto id = val.image_ids()[i];
    std::string refs_html;
    for (const auto& ref : val.references(id)) refs_html += "<br>" + html_escape(ref);
    const std::string before = scst_seconds > 0
                                   ? fmt::format("<br><span class='xe'>cross-entropy: {}</span>",
                                                 html_escape(xe.captions[i].text))
                                   : std::string();
    // The attention per word of the first captions that have words, over the crop the model
    // saw.
    const Caption& c = final_out.captions[i];
    const bool draw = c.attention.defined() && !c.tokens.empty() && drawn < 12;
    drawn += draw ? 1 : 0;
    const std::string figures =
        draw ? attention_figures_html(
                   model_view(decode_image(paths[i]), xe_model->eval_transform().options(), 96),
                   c.attention, c.tokens, fmt::format("v{}", i))
             : std::string();
    html += fmt::format(
        "<tr><td><img src='data:image/jpeg;base64,{}'></td><td><span "
        "class='gen'>{}</span>{}{}{}</td></tr>",
        base64(detail::read_file(paths[i])), html_escape(c.text), before, refs_html, figures);
  }
  html += "</table></body></html>\n";
  const auto report = detail::join_path(a.out, "report.html");
  write_output_file(report, html);
  fmt::print("[5/5] wrote {} and {}\n", report, final_file);
}

}  // namespace

void add_demo_command(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  auto* cmd = app.add_subcommand(
      "demo", "Generate a synthetic dataset, train on it from scratch, caption and score");
  cmd->add_option("--out", a->out, "Folder for the dataset, the model and report.html")
      ->capture_default_str();
  cmd->add_flag("--quick", a->quick, "A small run of under a minute (for tests)");
  cmd->add_option("--seconds", a->seconds,
                  "Training time budget, both phases (default 200, or 25 with --quick)")
      ->check(finite_range(0.0, 1e7));
  cmd->add_option("--scst-share", a->scst_share,
                  "Share of the budget spent on self-critical training (SCST) after "
                  "cross-entropy; 0: cross-entropy only")
      ->capture_default_str()
      ->check(finite_range(0.0, 0.9));
  add_enum_option(cmd, "--decoder", a->decoder,
                  "show-tell, or attention (Show, Attend and Tell: the report draws each word's "
                  "attention)");
  cmd->add_option("--image-size", a->image_size,
                  "Side of the images the CNN sees, pixels (default 32, 64 with --decoder "
                  "attention)")
      ->check(CLI::Range(16, 64));
  add_thread_options(cmd, a->threads, a->blas_threads);
  cmd->add_option("--seed", a->seed, "Random seed")->capture_default_str();
  cmd->callback([a] { run_demo(*a); });
}

}  // namespace imcap::cli
