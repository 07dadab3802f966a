// imcap import-pytorch: turn the original notebooks' checkpoints, or sgrvinod's Show, Attend
// and Tell checkpoint and word map, into one .imcap model file.
#include <memory>

#include <fmt/format.h>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "imcap/import.hpp"

namespace imcap::cli {

namespace {

struct ImportArgs {
  std::string encoder, decoder, vocab, arch = "resnet50", out, checkpoint, word_map;
  std::int64_t embed_size = 0, hidden_size = 0;
  int resize = 256, crop = 0, grid = 14;  // crop 0: 224 (notebooks), 256 (--checkpoint)
};

void run_import_show_attend_tell(const ImportArgs& a) {
  check_output_is_not_an_input("--out", a.out,
                               {{"--checkpoint", a.checkpoint}, {"--word-map", a.word_map}});
  ShowAttendTellImportOptions o;
  o.grid = a.grid;
  o.image_size = a.crop > 0 ? a.crop : 256;
  const auto model = import_show_attend_tell(a.checkpoint, a.word_map, o);
  model.save(a.out);
  const auto& c = model.config();
  fmt::print(
      "{}: {} encoder, {}x{} grid, attention decoder (E {}, H {}, A {}), {} words (<start>={}, "
      "<end>={})\n",
      a.out, to_string(c.encoder.arch), c.grid, c.grid, c.attention.embed_size,
      c.attention.hidden_size, c.attention.attention_dim, model.vocab().size(),
      model.vocab().start_id(), model.vocab().end_id());
}

void run_import(const ImportArgs& a) {
  const bool notebook = !a.encoder.empty() || !a.decoder.empty() || !a.vocab.empty();
  const bool sat = !a.checkpoint.empty() || !a.word_map.empty();
  if (notebook && sat)
    throw UsageError(
        "--encoder/--decoder/--vocab (the notebooks) and --checkpoint/--word-map (Show, Attend "
        "and Tell) do not go together");
  if (sat) {
    if (a.checkpoint.empty() || a.word_map.empty())
      throw UsageError("--checkpoint and --word-map go together");
    return run_import_show_attend_tell(a);
  }
  if (a.encoder.empty() || a.decoder.empty() || a.vocab.empty())
    throw UsageError(
        "--encoder, --decoder and --vocab are required (or --checkpoint and --word-map)");
  check_output_is_not_an_input(
      "--out", a.out, {{"--encoder", a.encoder}, {"--decoder", a.decoder}, {"--vocab", a.vocab}});
  NotebookImportOptions o;
  o.encoder_arch = parse_resnet_arch(a.arch);
  o.embed_size = a.embed_size;
  o.hidden_size = a.hidden_size;
  o.image_resize = a.resize;
  o.image_crop = a.crop > 0 ? a.crop : 224;
  const auto model = import_notebook_model(a.encoder, a.decoder, a.vocab, o);
  model.save(a.out);
  const auto& c = model.config();
  fmt::print("{}: {} encoder, embed {}, LSTM {}x{}, {} words (<start>={}, <end>={}, <unk>={})\n",
             a.out, to_string(c.encoder.arch), c.encoder.embed_size, c.decoder.num_layers,
             c.decoder.hidden_size, model.vocab().size(), model.vocab().start_id(),
             model.vocab().end_id(), model.vocab().unk_id());
}

}  // namespace

void add_import_command(CLI::App& app) {
  auto a = std::make_shared<ImportArgs>();
  auto* cmd = app.add_subcommand(
      "import-pytorch",
      "Convert the PyTorch notebooks' encoder/decoder/vocab files, or a Show, Attend and Tell "
      "checkpoint and word map, into a .imcap model");
  cmd->add_option("--encoder", a->encoder,
                  "EncoderCNN state dict (torch.save), e.g. encoder-3.pkl");
  cmd->add_option("--decoder", a->decoder,
                  "DecoderRNN state dict (torch.save), e.g. decoder-3.pkl");
  cmd->add_option("--vocab", a->vocab, "The pickled Vocabulary (vocab.pkl)");
  cmd->add_option("--checkpoint", a->checkpoint,
                  "sgrvinod's Show, Attend and Tell checkpoint (BEST_checkpoint_*.pth.tar)");
  cmd->add_option("--word-map", a->word_map, "Its word map (WORDMAP_*.json)");
  cmd->add_option("--grid", a->grid,
                  "With --checkpoint: S of the encoder's S x S pool (encoded_image_size)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd->add_option("--encoder-arch", a->arch, "torchvision ResNet the encoder wraps")
      ->capture_default_str()
      ->check(one_of<ResNetArch>());
  cmd->add_option("--embed-size", a->embed_size,
                  "Expected embedding size (0: read it from the weights)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65536));
  cmd->add_option("--hidden-size", a->hidden_size,
                  "Expected LSTM hidden size (0: read it from the weights)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65536));
  cmd->add_option("--image-resize", a->resize, "Shorter side before the centre crop")
      ->capture_default_str()
      ->check(CLI::Range(16, 8192));
  cmd->add_option("--image-size", a->crop,
                  "Side of the centre crop (with --checkpoint: of the square images)")
      ->default_str("224, with --checkpoint 256")
      ->check(CLI::Range(16, 4096));
  cmd->add_option("--out", a->out, "Model file to write (.imcap)")->required();
  cmd->callback([a] { run_import(*a); });
}

}  // namespace imcap::cli
