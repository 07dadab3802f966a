// ThreadSanitizer probe (scripts/tsan-captioner): one Captioner, a small random-weight model,
// the same images captioned serially and then from 8 threads at once. Exits 1 when a thread's
// captions differ from the serial ones; TSan reports data races on its own.
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "imcap/captioner.hpp"
#include "imcap/model.hpp"
#include "imcap/vocabulary.hpp"

int main() {
  torch::manual_seed(3);
  imcap::ModelConfig c;
  c.encoder.arch = imcap::ResNetArch::kResNet18;
  c.encoder.embed_size = 8;
  c.decoder.hidden_size = 16;
  c.image_resize = 32;
  c.image_crop = 32;
  const auto vocab = imcap::Vocabulary::build_from_captions(
      {"a red circle on the left", "a blue square and a green cross"}, {1});
  auto model = std::make_shared<imcap::CaptionModel>(c, vocab);
  model->train(false);
  imcap::CaptionOptions options;
  options.beam_size = 2;
  const imcap::Captioner captioner(model, options);
  std::vector<imcap::Image> images;
  for (int k = 0; k < 4; ++k) {
    imcap::Image img;
    img.width = 40 + k;
    img.height = 36;
    img.pixels.resize(std::size_t(img.width) * img.height * 3);
    for (std::size_t i = 0; i < img.pixels.size(); ++i)
      img.pixels[i] = static_cast<std::uint8_t>((i * (7 + k) + i / 5) % 256);
    images.push_back(std::move(img));
  }
  std::vector<std::string> serial;
  for (const auto& img : images) serial.push_back(captioner.caption(img).text);
  std::vector<int> mismatches(8, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 2; ++rep)
        for (std::size_t i = 0; i < images.size(); ++i)
          mismatches[t] += captioner.caption(images[i]).text != serial[i];
    });
  for (auto& th : threads) th.join();
  int bad = 0;
  for (int m : mismatches) bad += m;
  std::printf("8 threads x %zu images x 2: %d captions differ from serial use\n", images.size(),
              bad);
  return bad == 0 ? 0 : 1;
}
