// The imcap command-line tool. Exit codes: 0 success, 1 bad input ("imcap: error: ..." on
// stderr), 2 bad usage.
#include <cstdio>
#include <exception>
#include <iostream>
#include <set>
#include <string>

#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>

#include "cli/blas_core.hpp"
#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "imcap/error.hpp"
#include "imcap/version.hpp"

int main(int argc, char** argv) {
  // The commands that spend their time in matrix products start again with OpenBLAS kernels
  // that fit the CPU where the loaded OpenBLAS does not know it (cli/blas_core.hpp).
  static const std::set<std::string> computing = {"train",    "demo",  "caption", "predict",
                                                  "features", "bench", "serve"};
  if (argc > 1 && computing.count(argv[1]) > 0) imcap::cli::restart_with_fitting_blas_core(argv);
  CLI::App app{"imcap: image captioning with a CNN encoder and an LSTM decoder", "imcap"};
  app.set_version_flag("--version", imcap::kVersion);
  app.require_subcommand(1);
  imcap::cli::add_info_command(app);
  imcap::cli::add_vocab_command(app);
  imcap::cli::add_synth_command(app);
  imcap::cli::add_import_command(app);
  imcap::cli::add_features_command(app);
  imcap::cli::add_caption_command(app);
  imcap::cli::add_predict_command(app);
  imcap::cli::add_train_command(app);
  imcap::cli::add_demo_command(app);
  imcap::cli::add_eval_command(app);
  imcap::cli::add_weights_command(app);
  imcap::cli::add_bench_command(app);
  imcap::cli::add_serve_command(app);
  try {
    // CLI11 would report an unknown command as "A subcommand is required".
    if (argc > 1 && argv[1][0] != '-' &&
        app.get_subcommands([&](CLI::App* sub) { return sub->get_name() == argv[1]; }).empty())
      throw imcap::cli::UsageError(std::string("unknown command '") + argv[1] + "'");
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help, version or the usage error
    return code == 0 ? 0 : 2;
  } catch (const imcap::cli::UsageError& e) {
    std::cerr << "imcap: usage error: " << e.what() << "\nRun with --help for more information.\n";
    return 2;
  } catch (const c10::Error& e) {  // LibTorch's message, without its C++ backtrace
    std::cerr << "imcap: error: " << e.what_without_backtrace() << '\n';
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "imcap: error: " << e.what() << '\n';
    return 1;
  }
  // Output that could not be written (a full disk, a closed pipe) is an error, not a success.
  if (!std::cout || std::fflush(stdout) != 0 || std::ferror(stdout) != 0) {
    std::cerr << "imcap: error: <stdout>: cannot write the output\n";
    return 1;
  }
  return 0;
}
