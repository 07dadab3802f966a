#include "cli/cli_common.hpp"

#include <thread>

#include <torch/torch.h>

#include "detail/io.hpp"

namespace imcap::cli {

void set_threads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(threads);
}

void write_output_file(const std::string& path, const std::string& text) {
  detail::write_file_atomic(path, text);
}

}  // namespace imcap::cli
