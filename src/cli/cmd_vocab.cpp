// imcap vocab: build a vocabulary from COCO caption files (the seed's vocabulary.py).
#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "imcap/vocabulary.hpp"

namespace imcap::cli {

namespace {

struct VocabArgs {
  std::vector<std::string> annotations;
  int threshold = VocabularyOptions{}.threshold;
  std::size_t max_size = 0;
  std::string out, split;
};

void run_vocab(const VocabArgs& args) {
  std::vector<std::pair<std::string, std::string>> inputs;
  for (const auto& file : args.annotations) inputs.emplace_back("--annotations", file);
  check_output_is_not_an_input("--out", args.out, inputs);
  const auto t0 = std::chrono::steady_clock::now();
  VocabularyOptions options;
  options.threshold = args.threshold;
  options.max_size = args.max_size;
  // Karpathy's file holds every split: the words are counted over the ones --split names.
  const bool one_file = args.annotations.size() == 1;
  if (!one_file && !args.split.empty())
    throw UsageError("--split reads one Karpathy file: give a single --annotations");
  const auto vocab =
      one_file ? Vocabulary::build(
                     load_annotations(args.annotations[0], args.split, "--split", true), options)
               : Vocabulary::build(args.annotations, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  vocab.save(args.out);
  fmt::print("{}: {} tokens (threshold {}) from {} file(s) in {:.3f} s\n", args.out, vocab.size(),
             args.threshold, args.annotations.size(), seconds);
}

}  // namespace

void add_vocab_command(CLI::App& app) {
  auto args = std::make_shared<VocabArgs>();
  auto* cmd = app.add_subcommand("vocab", "Build a vocabulary file from COCO caption files");
  cmd->add_option("--annotations", args->annotations,
                  "COCO captions JSON file(s), or one Karpathy dataset_coco.json with --split")
      ->required()
      ->expected(1, -1);
  add_split_option(cmd, args->split);
  cmd->add_option("--threshold", args->threshold, "Minimum word count to keep a word")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000000000));
  cmd->add_option("--max-size", args->max_size, "Keep at most this many words (0: no limit)")
      ->capture_default_str();
  cmd->add_option("--out", args->out, "Vocabulary file to write")->required();
  cmd->callback([args] { run_vocab(*args); });
}

}  // namespace imcap::cli
