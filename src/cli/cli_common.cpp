#include "cli/cli_common.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include <torch/torch.h>

#include "detail/io.hpp"
#include "imcap/error.hpp"

namespace imcap::cli {

void set_threads(int threads, int blas) {
  // OpenBLAS single-threaded inside Torch's parallel regions unless asked (imcap/threads.hpp).
  set_cpu_threads(threads, blas >= 1 ? blas : 1);
}

namespace {

CLI::Validator number_check(double lo, double hi, bool lo_included) {
  const std::string expected = lo_included ? fmt::format("a number from {} to {}", lo, hi)
                                           : fmt::format("a number above {}, at most {}", lo, hi);
  return CLI::Validator(
      [=](std::string& value) -> std::string {
        char* end = nullptr;
        errno = 0;
        const double x = std::strtod(value.c_str(), &end);
        const bool parsed = !value.empty() && end == value.c_str() + value.size() && errno == 0;
        if (parsed && std::isfinite(x) && (lo_included ? x >= lo : x > lo) && x <= hi) return {};
        return fmt::format("expected {}, got '{}'", expected, value);
      },
      expected);
}

}  // namespace

CLI::Validator finite_range(double lo, double hi) { return number_check(lo, hi, true); }
CLI::Validator finite_above(double lo, double hi) { return number_check(lo, hi, false); }

CLI::Validator thread_count() {
  const std::string expected = fmt::format("a number of threads from 0 to {}", kMaxThreads);
  return CLI::Validator(
      [=](std::string& value) -> std::string {
        try {
          std::size_t used = 0;
          const int n = std::stoi(value, &used);
          if (used == value.size() && n >= 0 && n <= kMaxThreads) return {};
        } catch (const std::exception&) {
        }
        return fmt::format("expected {}, got '{}'", expected, value);
      },
      fmt::format("0..{}", kMaxThreads));
}

void check_output_is_not_an_input(const std::string& output_option, const std::string& output,
                                  const std::vector<std::pair<std::string, std::string>>& inputs) {
  if (output.empty())
    throw UsageError(fmt::format("{}: expected a file name, got an empty one", output_option));
  for (const auto& [option, path] : inputs) {
    if (!path.empty() && detail::same_file(output, path))
      throw UsageError(
          fmt::format("{} '{}' is the same file as {} '{}': writing it would destroy "
                      "the input; choose another output file",
                      output_option, output, option, path));
  }
}

CLI::Option* add_split_option(CLI::App* cmd, std::string& split, const std::string& name,
                              const std::string& file_option) {
  return cmd
      ->add_option(name, split,
                   fmt::format("Images of Karpathy's dataset_coco.json given to {}: train, "
                               "restval, val, test, or several joined by '+' (train+restval: "
                               "the 113,287 training images of papers)",
                               file_option))
      ->type_name("SPLIT");
}

CocoAnnotations load_annotations(const std::string& path, const std::string& split,
                                 const std::string& split_option, bool require_split) {
  AnnotationOptions options;
  options.split = split;
  auto annotations = CocoAnnotations::load(path, options);
  if (require_split && annotations.karpathy() && split.empty()) {
    std::string have;
    for (const auto& [name, n] : annotations.splits())
      have += fmt::format("{}{} ({} images)", have.empty() ? "" : ", ", name, n);
    throw UsageError(
        fmt::format("{} is a Karpathy split file: choose its images with {} (it has "
                    "{})",
                    path, split_option, have.empty() ? "no images" : have));
  }
  return annotations;
}

void add_thread_options(CLI::App* cmd, int& threads, int& blas) {
  cmd->add_option("--threads", threads, "Torch threads (0: one per core)")
      ->capture_default_str()
      ->check(thread_count());
  cmd->add_option("--blas-threads", blas,
                  "OpenBLAS threads (-1: 1; see docs/performance.md#threads for when 2 or more "
                  "pay)")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            const std::string expected =
                fmt::format("expected -1 or a number of threads from 1 to {}", kMaxThreads);
            try {
              std::size_t used = 0;
              const int n = std::stoi(value, &used);
              if (used == value.size() && (n == -1 || (n >= 1 && n <= kMaxThreads))) return {};
            } catch (const std::exception&) {
            }
            return expected + ", got '" + value + "'";
          },
          "-1 or 1..1024"));
}

void add_decode_weights_option(CLI::App* cmd, DecodeWeights& weights) {
  cmd->add_option_function<std::string>(
         "--decode-weights",
         [&weights](const std::string& name) { weights = parse_decode_weights(name); },
         "Output projection while decoding: float32, or bfloat16/int8 (faster on a CPU, same "
         "greedy words; docs/search.md#decode-weights)")
      ->check(one_of<DecodeWeights>())
      ->default_str("float32");
}

void add_encoder_dtype_option(CLI::App* cmd, std::optional<torch::Dtype>& dtype) {
  cmd->add_option_function<std::string>(
         "--encoder-dtype",
         [&dtype](const std::string& name) {
           if (name == "float32") {
             dtype = torch::kFloat;
           } else if (name == "bfloat16") {
             dtype = torch::kBFloat16;
           } else {
             dtype = torch::kHalf;
           }
         },
         "Arithmetic of the CNN: float32, or bfloat16/float16 (a GPU's tensor cores; "
         "docs/performance.md#gpu)")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}))
      ->default_str("float32");
}

std::string describe_xe_weight(double xe_weight) {
  return xe_weight > 0 ? fmt::format(", plus {:g} x the references' cross-entropy", xe_weight)
                       : std::string();
}

std::string describe_threads() {
  const CpuThreads t = cpu_threads();
  return t.blas > 0 ? fmt::format("Torch {}, OpenBLAS {}", t.torch, t.blas)
                    : fmt::format("Torch {}", t.torch);
}

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available())
      throw InvalidArgument("--device " + name + ": this build or machine has no CUDA device");
    // A command's shapes repeat batch after batch, so cuDNN's one-off search for the fastest
    // convolution algorithm per shape pays for itself (docs/performance.md#gpu).
    at::globalContext().setBenchmarkCuDNN(true);
    return torch::Device(name);
  }
  throw UsageError("--device '" + name + "': expected cpu, cuda or cuda:N");
}

void write_output_file(const std::string& path, const std::string& text) {
  detail::write_file_atomic(path, text);
}

}  // namespace imcap::cli
