// imcap caption and imcap predict: caption image files, or every image of a COCO file.
#include <cctype>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "cli/pictures.hpp"
#include "detail/io.hpp"
#include "imcap/captioner.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/error.hpp"

namespace imcap::cli {

namespace {

struct CaptionArgs {
  std::string model, device = "cpu", annotations, split, images, out, attention_dir;
  std::vector<std::string> inputs;
  CaptionOptions options;
  bool json = false;
  int threads = 0, blas_threads = -1, batch_size = 16;
};

// The attention pictures of one image: NAME.png (a strip of tiles) and NAME.html (SVG overlays).
// The names are the images' file names without the extension, made safe, numbered when they
// repeat; none may be one of the command's input files.
struct AttentionPages {
  std::string dir;
  std::vector<std::string> stems;  // per input image
  std::string index;

  AttentionPages(std::string folder, const std::vector<std::string>& images,
                 const std::string& model)
      : dir(std::move(folder)) {
    std::map<std::string, int> seen;
    for (const auto& path : images) {
      std::string stem = detail::file_name(path);
      if (const auto dot = stem.rfind('.'); dot != std::string::npos && dot > 0) stem.resize(dot);
      for (char& ch : stem)
        if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_')) ch = '_';
      if (const int n = seen[stem]++; n > 0) stem += fmt::format("-{}", n + 1);
      stems.push_back(stem);
    }
    std::vector<std::pair<std::string, std::string>> inputs{{"--model", model}};
    for (const auto& path : images) inputs.emplace_back("an image", path);
    for (const auto& stem : stems)
      for (const char* ext : {".png", ".html"})
        check_output_is_not_an_input("--attention", detail::join_path(dir, stem + ext), inputs);
    check_output_is_not_an_input("--attention", detail::join_path(dir, "index.html"), inputs);
  }

  void add(std::size_t i, const std::string& image_path, const Caption& c,
           const TransformOptions& transform) {
    const std::string& stem = stems[i];
    const Image view = model_view(decode_image(image_path), transform, 224);
    std::string figures = "<p>(no words)</p>";
    if (!c.tokens.empty()) {
      write_output_file(detail::join_path(dir, stem + ".png"),
                        encode_png(attention_strip(view, c.attention, c.tokens)));
      figures = attention_figures_html(view, c.attention, c.tokens, "v");
    }
    write_output_file(
        detail::join_path(dir, stem + ".html"),
        fmt::format("<!doctype html><html><head><meta charset='utf-8'><title>{0}</title><style>"
                    "body{{font-family:sans-serif;margin:2em}}.att{{display:flex;flex-wrap:wrap}}"
                    "figure{{margin:0 8px 8px 0}}figcaption{{font-weight:bold;margin-bottom:2px}}"
                    "</style></head><body><h1>{1}</h1><p>{0}</p>{2}<p>Each picture is the part "
                    "of the image the model saw; darker cells got less of the word's "
                    "attention (hover for the weight).</p></body></html>\n",
                    html_escape(image_path), html_escape(c.text), figures));
    index += fmt::format("<li><a href='{0}.html'>{1}</a>: {2}</li>", stem, html_escape(image_path),
                         html_escape(c.text));
  }

  void finish() const {
    write_output_file(detail::join_path(dir, "index.html"),
                      "<!doctype html><html><head><meta charset='utf-8'><title>imcap "
                      "attention</title></head><body><h1>Attention per word</h1><ul>" +
                          index + "</ul></body></html>\n");
  }
};

void run_caption(const CaptionArgs& a) {
  if (a.options.num_return > a.options.beam_size)
    throw UsageError(
        fmt::format("--num-return {} is more than --beam {}: a search returns at "
                    "most one caption per beam",
                    a.options.num_return, a.options.beam_size));
  set_threads(a.threads, a.blas_threads);
  CaptionOptions options = a.options;
  options.attention_weights = !a.attention_dir.empty();
  const auto captioner = Captioner::load(a.model, parse_device(a.device), options);
  if (options.attention_weights && captioner.model().decoder_kind() != DecoderKind::kAttention)
    throw InvalidArgument(fmt::format(
        "--attention: {} has a '{}' decoder, which has no attention to draw (train with "
        "--decoder attention)",
        a.model, to_string(captioner.model().decoder_kind())));
  std::optional<AttentionPages> pages;
  if (options.attention_weights) {
    pages.emplace(a.attention_dir, a.inputs, a.model);
    detail::create_directories(a.attention_dir);
  }
  nlohmann::json results = nlohmann::json::array();
  for (std::size_t start = 0; start < a.inputs.size();
       start += static_cast<std::size_t>(a.batch_size)) {
    const std::vector<std::string> chunk(
        a.inputs.begin() + static_cast<std::ptrdiff_t>(start),
        a.inputs.begin() + static_cast<std::ptrdiff_t>(std::min(
                               a.inputs.size(), start + static_cast<std::size_t>(a.batch_size))));
    const auto candidates = captioner.candidates(captioner.encode(chunk, options), options);
    for (std::size_t i = 0; i < chunk.size(); ++i) {
      const std::vector<Caption>& found = candidates[i];
      const Caption best = found.empty() ? Caption{} : found.front();
      if (pages)
        pages->add(start + i, chunk[i], best, captioner.model().eval_transform().options());
      if (a.json) {
        nlohmann::json entry = {{"image", chunk[i]},
                                {"caption", best.text},
                                {"tokens", best.tokens},
                                {"log_prob", best.log_prob}};
        if (a.options.num_return > 1) {
          nlohmann::json list = nlohmann::json::array();
          for (const Caption& c : found)
            list.push_back({{"caption", c.text}, {"tokens", c.tokens}, {"log_prob", c.log_prob}});
          entry["candidates"] = std::move(list);
        }
        results.push_back(std::move(entry));
      } else if (a.options.num_return > 1) {
        for (const Caption& c : found) fmt::print("{}\t{}\t{:.4f}\n", chunk[i], c.text, c.log_prob);
      } else {
        fmt::print("{}\t{}\n", chunk[i], best.text);
      }
    }
  }
  // File names need not be UTF-8 on Linux: such bytes print as U+FFFD instead of failing.
  if (a.json)
    std::cout << results.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  if (pages) {
    pages->finish();
    std::cerr << fmt::format("attention pictures of {} images: {}\n", a.inputs.size(),
                             detail::join_path(a.attention_dir, "index.html"));
  }
}

void run_predict(const CaptionArgs& a) {
  check_output_is_not_an_input("--out", a.out,
                               {{"--model", a.model}, {"--annotations", a.annotations}});
  set_threads(a.threads, a.blas_threads);
  const auto captioner = Captioner::load(a.model, parse_device(a.device), a.options);
  const auto annotations = load_annotations(a.annotations, a.split, "--split", false);
  const auto& images = annotations.images();
  nlohmann::json results = nlohmann::json::array();
  for (std::size_t start = 0; start < images.size();
       start += static_cast<std::size_t>(a.batch_size)) {
    std::vector<std::string> paths;
    const std::size_t end = std::min(images.size(), start + static_cast<std::size_t>(a.batch_size));
    for (std::size_t i = start; i < end; ++i)
      paths.push_back(detail::join_path(a.images, images[i].file_name));
    const auto captions = captioner.caption_batch(paths, a.options);
    for (std::size_t i = start; i < end; ++i)
      results.push_back({{"image_id", images[i].id}, {"caption", captions[i - start].text}});
    std::cerr << fmt::format("\rpredict: {}/{} images", end, images.size()) << std::flush;
  }
  std::cerr << '\n';
  write_output_file(a.out, results.dump(1) + "\n");
  fmt::print("{}: {} captions\n", a.out, results.size());
}

void add_search_options(CLI::App* cmd, CaptionArgs& a) {
  cmd->add_option("--beam", a.options.beam_size, "Beam size (1: greedy)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  cmd->add_option("--max-length", a.options.max_length, "Most tokens per caption")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--alpha", a.options.alpha, "Length normalisation exponent")
      ->capture_default_str()
      ->check(finite_range(0.0, 10.0));
  cmd->add_option("--min-length", a.options.min_length, "Fewest words before <end>")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  add_decode_weights_option(cmd, a.options.decode_weights);
  add_encoder_dtype_option(cmd, a.options.encoder_dtype);
  cmd->add_option("--device", a.device, "cpu, cuda or cuda:N")->capture_default_str();
  add_thread_options(cmd, a.threads, a.blas_threads);
  cmd->add_option("--batch-size", a.batch_size, "Images per batched search")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
}

}  // namespace

void add_caption_command(CLI::App& app) {
  auto a = std::make_shared<CaptionArgs>();
  auto* cmd = app.add_subcommand("caption", "Caption image files with a model");
  cmd->add_option("--model", a->model, "Model file (.imcap)")->required();
  cmd->add_option("images", a->inputs, "Image files (JPEG, PNG, BMP, GIF)")->required();
  cmd->add_flag("--json", a->json,
                "Print a JSON array of {image, caption, tokens, log_prob} (and candidates with "
                "--num-return)");
  cmd->add_option("--num-return", a->options.num_return,
                  "Captions per image, best first, at most --beam (text: one line each, with "
                  "the log-probability)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  cmd->add_option("--attention", a->attention_dir,
                  "Attention models: write each image's attention per word to this folder "
                  "(NAME.png, NAME.html, index.html)");
  add_search_options(cmd, *a);
  cmd->callback([a] { run_caption(*a); });
}

void add_predict_command(CLI::App& app) {
  auto a = std::make_shared<CaptionArgs>();
  auto* cmd =
      app.add_subcommand("predict", "Caption every image of a COCO file into a COCO results file");
  cmd->add_option("--model", a->model, "Model file (.imcap)")->required();
  cmd->add_option("--annotations", a->annotations,
                  "COCO captions JSON listing the images, or Karpathy's dataset_coco.json with "
                  "--split (results keyed by cocoid)")
      ->required();
  add_split_option(cmd, a->split);
  cmd->add_option("--images", a->images, "Folder holding the images")->required();
  cmd->add_option("--out", a->out, "Results file to write: [{\"image_id\", \"caption\"}]")
      ->required();
  add_search_options(cmd, *a);
  cmd->callback([a] { run_predict(*a); });
}

}  // namespace imcap::cli
