// The imcap CLI's subcommands. Each add_*_command registers one subcommand on the app; its
// callback throws imcap::Error on bad input (exit 1), and CLI11 reports bad usage (exit 2).
#pragma once

#include <CLI/CLI.hpp>

namespace imcap::cli {

void add_info_command(CLI::App& app);
void add_vocab_command(CLI::App& app);
void add_synth_command(CLI::App& app);
void add_import_command(CLI::App& app);
void add_features_command(CLI::App& app);
void add_caption_command(CLI::App& app);
void add_predict_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_demo_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_weights_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_serve_command(CLI::App& app);

}  // namespace imcap::cli
