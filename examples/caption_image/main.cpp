// Captions image files with a trained model:  caption_image MODEL.imcap IMAGE...
#include <imcap/captioner.hpp>
#include <imcap/error.hpp>
#include <imcap/threads.hpp>

#include <iostream>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: caption_image MODEL.imcap IMAGE...\n";
    return 2;
  }
  try {
    imcap::set_cpu_threads();  // one Torch thread per core, OpenBLAS inside them
    imcap::CaptionOptions options;
    options.beam_size = 3;
    const auto captioner = imcap::Captioner::load(argv[1], torch::kCPU, options);
    for (int i = 2; i < argc; ++i) {
      const imcap::Caption caption = captioner.caption(std::string(argv[i]));
      std::cout << argv[i] << ": " << caption.text << "  (log p " << caption.log_prob << ")\n";
    }
  } catch (const imcap::Error& e) {
    std::cerr << "caption_image: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
