// imcap weights: inspect weight files (torch.save zip/legacy, safetensors) and convert them to
// safetensors.
#include <map>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "detail/utf8.hpp"
#include "imcap/error.hpp"
#include "imcap/weights.hpp"

namespace imcap::cli {

namespace {

struct WeightsArgs {
  std::string file;
  std::string key;
  bool json = false;
  std::string out;
  std::vector<std::string> metadata;
};

TorchLoadOptions load_options(const WeightsArgs& args) {
  TorchLoadOptions options;
  options.state_dict_key = args.key;
  return options;
}

void run_inspect(const WeightsArgs& args) {
  const auto format = detect_weights_format(args.file);
  const auto tensors = load_weights(args.file, load_options(args));
  std::int64_t bytes = 0;
  for (const auto& [name, t] : tensors)
    bytes += t.numel() * static_cast<std::int64_t>(t.element_size());
  if (args.json) {
    nlohmann::ordered_json out;
    out["file"] = args.file;
    out["format"] = to_string(format);
    out["tensors"] = nlohmann::ordered_json::array();
    for (const auto& [name, t] : tensors) {
      out["tensors"].push_back({{"name", name},
                                {"dtype", dtype_name(t.scalar_type())},
                                {"shape", t.sizes().vec()},
                                {"numel", t.numel()}});
    }
    out["total_tensors"] = tensors.size();
    out["total_parameters"] = tensors.total_numel();
    out["total_bytes"] = bytes;
    fmt::print("{}\n", out.dump(2));
    return;
  }
  std::size_t width = 4;
  for (const auto& [name, t] : tensors) width = std::max(width, name.size());
  fmt::print("{}: {}\n", args.file, to_string(format));
  fmt::print("{:<{}}  {:<10}  {}\n", "name", width, "dtype", "shape");
  for (const auto& [name, t] : tensors) {
    fmt::print("{:<{}}  {:<10}  [{}]\n", name, width, dtype_name(t.scalar_type()),
               fmt::join(t.sizes(), ", "));
  }
  fmt::print("{} tensors, {} values (parameters and buffers), {} bytes\n", tensors.size(),
             tensors.total_numel(), bytes);
}

void run_convert(const WeightsArgs& args) {
  check_output_is_not_an_input("--out", args.out, {{"FILE", args.file}});
  std::map<std::string, std::string> metadata;
  for (const auto& kv : args.metadata) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      throw UsageError(fmt::format("--metadata '{}': expected KEY=VALUE", kv));
    // The header is JSON, which holds only UTF-8 text.
    if (const std::string problem = detail::utf8_problem(kv); !problem.empty())
      throw UsageError(fmt::format("--metadata: {}", problem));
    if (!metadata.emplace(kv.substr(0, eq), kv.substr(eq + 1)).second)
      throw UsageError(fmt::format("--metadata: key '{}' given twice", kv.substr(0, eq)));
  }
  const auto tensors = load_weights(args.file, load_options(args));
  save_safetensors(args.out, tensors, metadata);
  fmt::print("{}: {} tensors, {} parameters\n", args.out, tensors.size(), tensors.total_numel());
}

}  // namespace

void add_weights_command(CLI::App& app) {
  auto args = std::make_shared<WeightsArgs>();
  auto* cmd =
      app.add_subcommand("weights", "Inspect or convert weight files (torch.save, safetensors)");
  cmd->require_subcommand(1);

  auto* inspect = cmd->add_subcommand("inspect", "List the tensors of a weight file");
  inspect->add_option("file", args->file, "torch.save (.pt/.pth/.pkl) or .safetensors file")
      ->required();
  inspect->add_option("--key", args->key,
                      "Key of the state dict inside a checkpoint dict (default: detect)");
  inspect->add_flag("--json", args->json, "Print JSON instead of a table");
  inspect->callback([args] { run_inspect(*args); });

  auto* convert = cmd->add_subcommand("convert", "Convert a weight file to safetensors");
  convert->add_option("file", args->file, "torch.save or safetensors file")->required();
  convert->add_option("--out", args->out, "safetensors file to write")->required();
  convert->add_option("--key", args->key,
                      "Key of the state dict inside a checkpoint dict (default: detect)");
  convert->add_option("--metadata", args->metadata, "KEY=VALUE pairs stored in __metadata__");
  convert->callback([args] { run_convert(*args); });
}

}  // namespace imcap::cli
