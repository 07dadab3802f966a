// imcap synth: write the synthetic shapes dataset (COCO format) that the demo trains on.
#include <memory>

#include <fmt/format.h>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "imcap/synthetic.hpp"

namespace imcap::cli {

void add_synth_command(CLI::App& app) {
  auto opts = std::make_shared<SyntheticOptions>();
  auto dir = std::make_shared<std::string>();
  auto kind = std::make_shared<std::string>("shapes");
  auto* cmd = app.add_subcommand(
      "synth", "Generate a synthetic COCO-format captioning dataset (shapes, counts, ...)");
  cmd->add_option("--out", *dir, "Folder to write captions_{train,val}.json and train/, val/ into")
      ->required();
  cmd->add_option("--train", opts->train_images, "Training images")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000000));
  cmd->add_option("--val", opts->val_images, "Held-out images")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000000));
  cmd->add_option("--size", opts->image_size, "Image side in pixels")
      ->capture_default_str()
      ->check(CLI::Range(16, 1024));
  cmd->add_option("--max-shapes", opts->max_shapes, "Up to this many shapes per image (shapes)")
      ->capture_default_str()
      ->check(CLI::Range(1, 3));
  cmd->add_option("--kind", *kind,
                  "What the captions depend on: shapes (kind, colour, size, left to right; the "
                  "demo's), counts (how many), relations (above, below, left of, right of), "
                  "glyphs (letters and digits), textures (striped, checkered, dotted, plain)")
      ->capture_default_str()
      ->check(one_of<SyntheticKind>());
  cmd->add_option("--seed", opts->seed, "Random seed")->capture_default_str();
  cmd->callback([opts, dir, kind] {
    opts->kind = parse_synthetic_kind(*kind);
    const auto files = generate_synthetic_dataset(*dir, *opts);
    fmt::print("{}: {} training images ({}), {} held-out images ({})\n", *dir, opts->train_images,
               files.train_annotations, opts->val_images, files.val_annotations);
  });
}

}  // namespace imcap::cli
