// imcap features: pooled CNN features (or grids, --spatial) of every image of an annotation file,
// as safetensors.
#include <chrono>
#include <cstdint>
#include <memory>

#include <fmt/format.h>
#include <torch/torch.h>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "cli/train_defaults.hpp"
#include "imcap/features.hpp"
#include "imcap/weights.hpp"

namespace imcap::cli {

namespace {

struct FeaturesArgs {
  std::string annotations, split, images, arch = "resnet152", weights, out, device = "cpu";
  int image_size = 224, batch_size = 32, threads = 0, blas_threads = -1;
  std::optional<torch::Dtype> encoder_dtype;
  std::uint64_t seed = 0;
  bool spatial = false;
  int grid = 0;
  std::string dtype = "float16";
};

void run_features(const FeaturesArgs& a) {
  check_output_is_not_an_input("--out", a.out,
                               {{"--annotations", a.annotations}, {"--weights", a.weights}});
  set_threads(a.threads, a.blas_threads);
  torch::manual_seed(a.seed);  // the initial weights, when no --weights replace them
  ResNetOptions ro;
  ro.arch = parse_resnet_arch(a.arch);
  ResNet cnn(ro);
  if (!a.weights.empty()) {
    LoadOptions lo;
    lo.ignore = {"fc\\..*"};  // torchvision's full-classifier files
    load_state_dict(*cnn, load_weights(a.weights), lo);
  }
  cnn->to(parse_device(a.device));
  const auto annotations = load_annotations(a.annotations, a.split, "--split", false);
  FeatureOptions fo;
  fo.crop = a.image_size;
  // The seed's transform, which imcap train --features assumes (train_defaults.hpp).
  fo.resize = train_defaults::image_resize(a.image_size, /*pretrained=*/true);
  fo.batch_size = a.batch_size;
  fo.progress = true;
  fo.compute_dtype = a.encoder_dtype;
  fo.spatial = a.spatial;
  fo.grid = a.grid;
  fo.spatial_dtype = a.dtype == "float32"    ? torch::kFloat
                     : a.dtype == "bfloat16" ? torch::kBFloat16
                                             : torch::kHalf;
  const auto t0 = std::chrono::steady_clock::now();
  const auto set = extract_features(cnn, annotations, a.images, fo);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  save_features(a.out, set);
  const double ms = 1e3 * s / static_cast<double>(set.features.size(0));
  if (set.spatial()) {
    fmt::print("{}: {} images x {} positions x {} features, {} ({}, {:.1f} ms/image)\n", a.out,
               set.features.size(0), set.features.size(1), set.features.size(2), a.dtype, a.arch,
               ms);
  } else {
    fmt::print("{}: {} images x {} features ({}, {:.1f} ms/image)\n", a.out, set.features.size(0),
               set.features.size(1), a.arch, ms);
  }
}

}  // namespace

void add_features_command(CLI::App& app) {
  auto a = std::make_shared<FeaturesArgs>();
  auto* cmd = app.add_subcommand(
      "features", "Compute pooled CNN features (or grids) of every image (safetensors)");
  cmd->add_option("--annotations", a->annotations,
                  "COCO captions JSON, or Karpathy's dataset_coco.json (all its images, or "
                  "--split's)")
      ->required();
  add_split_option(cmd, a->split);
  cmd->add_option("--images", a->images, "Folder holding the images")->required();
  cmd->add_option("--encoder", a->arch, "torchvision ResNet")
      ->capture_default_str()
      ->check(one_of<ResNetArch>());
  cmd->add_option("--weights", a->weights,
                  "ResNet weights (torchvision .pth or safetensors); fc.* is ignored");
  cmd->add_option("--image-size", a->image_size,
                  "Side of the centre crop (resized to 256/224 of it first)")
      ->capture_default_str()
      ->check(CLI::Range(16, 4096));
  cmd->add_option("--batch-size", a->batch_size, "Images per forward pass")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  add_thread_options(cmd, a->threads, a->blas_threads);
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  add_encoder_dtype_option(cmd, a->encoder_dtype);
  auto* spatial =
      cmd->add_flag("--spatial", a->spatial,
                    "The last stage's map as a grid per image (for --decoder attention), not its "
                    "average");
  cmd->add_option("--grid", a->grid,
                  "With --spatial: pool the map to S x S first (0: as it is, 7 x 7 at 224 px)")
      ->capture_default_str()
      ->check(CLI::Range(0, 64))
      ->needs(spatial);
  cmd->add_option("--dtype", a->dtype, "With --spatial: the grids' type on disk and in memory")
      ->capture_default_str()
      ->check(CLI::IsMember({"float16", "bfloat16", "float32"}))
      ->needs(spatial);
  cmd->add_option("--seed", a->seed, "Seed of the initial weights (without --weights)")
      ->capture_default_str();
  cmd->add_option("--out", a->out, "Output .safetensors file")->required();
  cmd->callback([a] { run_features(*a); });
}

}  // namespace imcap::cli
