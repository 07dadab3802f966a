// Helpers shared by the CLI subcommands (private to the imcap executable).
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/types.h>
#include <CLI/CLI.hpp>

#include "detail/enum_names.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/decoder.hpp"
#include "imcap/threads.hpp"

namespace imcap::cli {

/// Thrown by a subcommand for bad usage that CLI11 cannot see (e.g. two options that conflict
/// in value); main() prints it and exits with code 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Sets the number of intra-op threads Torch uses (0: one per core), and OpenBLAS's: `blas` when
/// it is 1 or more, else (-1, the default) 1 when Torch's are several, so that the two thread
/// pools do not compete for the cores (docs/performance.md#threads).
void set_threads(int threads, int blas = -1);
/// The most threads --threads, --blas-threads and --data-threads accept.
inline constexpr int kMaxThreads = kMaxCpuThreads;
/// A CLI11 check: a finite number from lo to hi (NaN and infinities fail, with the bounds as
/// written rather than CLI11's 300-digit DBL_MAX).
CLI::Validator finite_range(double lo, double hi);
/// The same with lo itself excluded ("a number above lo, at most hi").
CLI::Validator finite_above(double lo, double hi);
/// A CLI11 check: one of the names of E's values, from the library's own table.
template <typename E>
CLI::Validator one_of() {
  return CLI::IsMember(detail::enum_names<E>());
}
/// Adds an option bound to a field of one of the library's enums: it takes the names of E's
/// values (from the library's own table), and the help shows the field's current value, the
/// library's default, by name.
template <typename E>
CLI::Option* add_enum_option(CLI::App* cmd, const std::string& name, E& value,
                             const std::string& description) {
  const std::string names = fmt::format("{{{}}}", fmt::join(detail::enum_names<E>(), ","));
  // The name becomes the value's number, which CLI11 then stores into the enum.
  CLI::Validator by_name(
      [names](std::string& text) -> std::string {
        for (const auto& n : detail::enum_names<E>()) {
          if (text == n) {
            text = std::to_string(static_cast<int>(detail::parse_enum<E>(n)));
            return {};
          }
        }
        return fmt::format("{} not in {}", text, names);
      },
      names, "name");
  return cmd->add_option(name, value, description)
      ->transform(by_name)
      ->type_name("TEXT")
      ->default_str(detail::enum_name(value));
}
/// A CLI11 check: a whole number from 0 to kMaxThreads.
CLI::Validator thread_count();
/// Throws UsageError when the output file names the same file as one of the inputs (after
/// links), which writing it would destroy: e.g. `--out` equal to `--model`. `inputs` pairs each
/// input's option name with its path; empty paths are skipped.
void check_output_is_not_an_input(const std::string& output_option, const std::string& output,
                                  const std::vector<std::pair<std::string, std::string>>& inputs);

/// Adds `name` (--split, --val-split), the images of Karpathy's dataset_coco.json that the
/// command reads from the file of `file_option`, bound to `split`.
CLI::Option* add_split_option(CLI::App* cmd, std::string& split,
                              const std::string& name = "--split",
                              const std::string& file_option = "--annotations");
/// Reads an annotation file (COCO's or Karpathy's) with a split. When `require_split`, a Karpathy
/// file without one is a UsageError naming `split_option`, so that no command trains on the
/// test images by omission.
CocoAnnotations load_annotations(const std::string& path, const std::string& split,
                                 const std::string& split_option, bool require_split);

/// Adds --threads and --blas-threads, bound to `threads` and `blas`, to a subcommand.
void add_thread_options(CLI::App* cmd, int& threads, int& blas);
/// Adds --decode-weights float32|bfloat16|int8 (imcap::DecodeWeights), bound to `weights`.
void add_decode_weights_option(CLI::App* cmd, DecodeWeights& weights);
/// Adds --encoder-dtype float32|bfloat16|float16 (the CNN's compute type), bound to `dtype`.
void add_encoder_dtype_option(CLI::App* cmd, std::optional<torch::Dtype>& dtype);
/// "Torch N, OpenBLAS M" (OpenBLAS only when it is loaded), for the commands' first line.
std::string describe_threads();

/// ", plus W x the references' cross-entropy" for SCST's ScstOptions::xe_weight W > 0; empty
/// for SCST alone.
std::string describe_xe_weight(double xe_weight);

/// "cpu", "cuda" or "cuda:N" as a device; throws InvalidArgument when CUDA is unavailable and
/// UsageError for other names. Choosing a CUDA device turns on cuDNN's benchmark mode.
torch::Device parse_device(const std::string& name);

/// Writes text to path crash-safely (temporary file + rename); throws imcap::IoError.
void write_output_file(const std::string& path, const std::string& text);

}  // namespace imcap::cli
