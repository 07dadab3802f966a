// Helpers shared by the CLI subcommands (private to the imcap executable).
#pragma once

#include <optional>
#include <string>

#include <torch/types.h>
#include <CLI/CLI.hpp>

#include "imcap/decoder.hpp"

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
/// Adds --threads and --blas-threads, bound to `threads` and `blas`, to a subcommand.
void add_thread_options(CLI::App* cmd, int& threads, int& blas);
/// Adds --decode-weights float32|bfloat16|int8 (imcap::DecodeWeights), bound to `weights`.
void add_decode_weights_option(CLI::App* cmd, DecodeWeights& weights);
/// Adds --encoder-dtype float32|bfloat16|float16 (the CNN's compute type), bound to `dtype`.
void add_encoder_dtype_option(CLI::App* cmd, std::optional<torch::Dtype>& dtype);
/// "Torch N, OpenBLAS M" (OpenBLAS only when it is loaded), for the commands' first line.
std::string describe_threads();
/// Sets OpenBLAS's own thread count when OpenBLAS is loaded; returns whether it was.
bool set_blas_threads(int threads);
/// OpenBLAS's thread count, 0 when OpenBLAS is not loaded.
int blas_threads();

/// "cpu", "cuda" or "cuda:N" as a device; throws InvalidArgument when CUDA is unavailable and
/// UsageError for other names. Choosing a CUDA device turns on cuDNN's benchmark mode.
torch::Device parse_device(const std::string& name);

/// Writes text to path crash-safely (temporary file + rename); throws imcap::IoError.
void write_output_file(const std::string& path, const std::string& text);

}  // namespace imcap::cli
