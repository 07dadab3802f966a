// imcap eval: BLEU-1..4, ROUGE-L and CIDEr-D of a COCO results file (docs/metrics.md).
#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/metrics.hpp"

namespace imcap::cli {

namespace {

struct EvalArgs {
  std::string annotations, split;
  std::string results;
  bool json = false;
  std::string per_image;
  bool per_image_given = false;
};

// coco-caption's names, in the order it reports them.
const char* const kMetricNames[] = {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"};

std::array<double, 6> as_row(const CaptionScores& s) {
  return {s.bleu[0], s.bleu[1], s.bleu[2], s.bleu[3], s.rouge_l, s.cider};
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// CSV for a .csv path, otherwise a JSON list like coco-caption's evalImgs.
std::string per_image_text(const CorpusScores& scores, const std::string& path) {
  if (ends_with(path, ".csv")) {
    std::string out = "image_id";
    for (const char* name : kMetricNames) out += fmt::format(",{}", name);
    out += '\n';
    for (const auto& img : scores.per_image) {
      out += std::to_string(img.image_id);
      for (const double v : as_row(img.scores)) out += fmt::format(",{}", v);
      out += '\n';
    }
    return out;
  }
  nlohmann::json list = nlohmann::json::array();
  for (const auto& img : scores.per_image) {
    nlohmann::json entry;
    entry["image_id"] = img.image_id;
    const auto row = as_row(img.scores);
    for (std::size_t m = 0; m < row.size(); ++m) entry[kMetricNames[m]] = row[m];
    list.push_back(std::move(entry));
  }
  return list.dump(1) + '\n';
}

void run_eval(const EvalArgs& args) {
  if (args.per_image_given)
    check_output_is_not_an_input(
        "--per-image", args.per_image,
        {{"--annotations", args.annotations}, {"--results", args.results}});
  const auto annotations = load_annotations(args.annotations, args.split, "--split", false);
  const auto results = load_caption_results(args.results);
  const CorpusScores scores = evaluate_results(annotations, results);
  if (!args.per_image.empty())
    write_output_file(args.per_image, per_image_text(scores, args.per_image));
  const auto row = as_row(scores.corpus);
  if (args.json) {
    nlohmann::json out;
    for (std::size_t m = 0; m < row.size(); ++m) out[kMetricNames[m]] = row[m];
    out["images"] = scores.per_image.size();
    out["references"] = scores.references;
    std::cout << out.dump() << '\n';
    return;
  }
  fmt::print("{}: {} images, {} reference captions in {}\n\n", args.results,
             scores.per_image.size(), scores.references, args.annotations);
  fmt::print("  {:<8} {:>9}\n", "metric", "score");
  for (std::size_t m = 0; m < row.size(); ++m)
    fmt::print("  {:<8} {:>9.6f}\n", kMetricNames[m], row[m]);
  if (!args.per_image.empty()) fmt::print("\nper-image scores: {}\n", args.per_image);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand(
      "eval",
      "BLEU-1..4, ROUGE-L and CIDEr-D of a COCO results file, as coco-caption computes them");
  cmd->add_option("--annotations", args->annotations,
                  "COCO captions JSON file with the references, or Karpathy's dataset_coco.json")
      ->required();
  add_split_option(cmd, args->split);
  cmd->add_option("--results", args->results,
                  "COCO results JSON file: [{\"image_id\": int, \"caption\": str}, ...]")
      ->required();
  cmd->add_flag("--json", args->json,
                "Print one JSON object (Bleu_1..Bleu_4, ROUGE_L, CIDEr at full precision)");
  const CLI::Option* per_image =
      cmd->add_option("--per-image", args->per_image,
                      "Also write per-image scores to FILE (CSV if it ends in .csv, else JSON)");
  cmd->callback([args, per_image] {
    args->per_image_given = per_image->count() > 0;
    run_eval(*args);
  });
}

}  // namespace imcap::cli
