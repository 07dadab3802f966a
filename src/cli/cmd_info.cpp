// imcap info: notebook 0's look at a COCO captions file.
#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "imcap/coco_dataset.hpp"

namespace imcap::cli {

namespace {

struct InfoArgs {
  std::string annotations, split;
  std::size_t top = 20;
  bool json = false;
};

void run_info(const InfoArgs& args) {
  const auto annotations = load_annotations(args.annotations, args.split, "--split", false);
  const auto stats = caption_statistics(annotations, args.top);
  if (args.json) {
    nlohmann::json out;
    out["file"] = args.annotations;
    out["images"] = stats.images;
    out["captions"] = stats.captions;
    out["images_without_captions"] = stats.images_without_captions;
    if (annotations.karpathy()) {
      nlohmann::json splits = nlohmann::json::object();
      for (const auto& [name, n] : annotations.splits()) splits[name] = n;
      out["splits"] = splits;
    }
    nlohmann::json hist = nlohmann::json::object();
    for (const auto& [len, n] : stats.length_histogram) hist[std::to_string(len)] = n;
    out["caption_length_histogram"] = hist;
    nlohmann::json top = nlohmann::json::array();
    for (const auto& [word, n] : stats.top_words) top.push_back({{"word", word}, {"count", n}});
    out["top_words"] = top;
    std::cout << out.dump(2) << '\n';
    return;
  }
  fmt::print("{}\n", args.annotations);
  fmt::print("  images:   {}\n  captions: {}\n", stats.images, stats.captions);
  if (annotations.karpathy()) {
    fmt::print("  Karpathy split file{}; splits:",
               args.split.empty() ? "" : ", split " + args.split);
    for (const auto& [name, n] : annotations.splits()) fmt::print(" {} {}", name, n);
    fmt::print("\n");
  }
  if (stats.images_without_captions > 0)
    fmt::print("  images without captions: {}\n", stats.images_without_captions);
  std::size_t peak = 1;
  for (const auto& [len, n] : stats.length_histogram) peak = std::max(peak, n);
  fmt::print("\ncaption length (tokens): captions\n");
  for (const auto& [len, n] : stats.length_histogram) {
    const auto bar =
        static_cast<std::size_t>(40.0 * static_cast<double>(n) / static_cast<double>(peak) + 0.5);
    fmt::print("  {:>4}: {:>8}  {}\n", len, n, std::string(bar, '#'));
  }
  fmt::print("\nmost common words:\n");
  for (const auto& [word, n] : stats.top_words) fmt::print("  {:<16} {:>9}\n", word, n);
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto args = std::make_shared<InfoArgs>();
  auto* cmd = app.add_subcommand("info", "Statistics of a COCO captions annotation file");
  cmd->add_option("--annotations", args->annotations,
                  "COCO captions JSON file, or Karpathy's dataset_coco.json")
      ->required();
  add_split_option(cmd, args->split);
  cmd->add_option("--top", args->top, "How many of the most common words to list")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_flag("--json", args->json, "Print one JSON object instead of a table");
  cmd->callback([args] { run_info(*args); });
}

}  // namespace imcap::cli
