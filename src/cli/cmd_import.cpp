// imcap import-pytorch: turn the original notebooks' checkpoints into one .imcap model file.
#include <memory>

#include <fmt/format.h>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "imcap/import.hpp"

namespace imcap::cli {

namespace {

struct ImportArgs {
  std::string encoder, decoder, vocab, arch = "resnet50", out;
  std::int64_t embed_size = 0, hidden_size = 0;
  int resize = 256, crop = 224;
};

void run_import(const ImportArgs& a) {
  check_output_is_not_an_input(
      "--out", a.out, {{"--encoder", a.encoder}, {"--decoder", a.decoder}, {"--vocab", a.vocab}});
  NotebookImportOptions o;
  o.encoder_arch = parse_resnet_arch(a.arch);
  o.embed_size = a.embed_size;
  o.hidden_size = a.hidden_size;
  o.image_resize = a.resize;
  o.image_crop = a.crop;
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
      "Convert the PyTorch notebooks' encoder/decoder/vocab files into a .imcap model");
  cmd->add_option("--encoder", a->encoder, "EncoderCNN state dict (torch.save), e.g. encoder-3.pkl")
      ->required();
  cmd->add_option("--decoder", a->decoder, "DecoderRNN state dict (torch.save), e.g. decoder-3.pkl")
      ->required();
  cmd->add_option("--vocab", a->vocab, "The pickled Vocabulary (vocab.pkl)")->required();
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
  cmd->add_option("--image-size", a->crop, "Side of the centre crop")
      ->capture_default_str()
      ->check(CLI::Range(16, 4096));
  cmd->add_option("--out", a->out, "Model file to write (.imcap)")->required();
  cmd->callback([a] { run_import(*a); });
}

}  // namespace imcap::cli
