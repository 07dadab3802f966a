// Trains a captioning model on a COCO-format folder with the Trainer API:
//   train_coco TRAIN.json TRAIN_IMAGES/ VAL.json VAL_IMAGES/ OUT_DIR [SECONDS]
#include <imcap/imcap.hpp>

#include <iostream>

int main(int argc, char** argv) {
  if (argc < 6) {
    std::cerr
        << "usage: train_coco TRAIN.json TRAIN_IMAGES/ VAL.json VAL_IMAGES/ OUT_DIR [SECONDS]\n";
    return 2;
  }
  try {
    imcap::set_cpu_threads();  // one Torch thread per core, OpenBLAS inside them
    torch::manual_seed(1);
    imcap::ModelConfig config;
    config.encoder.arch = imcap::ResNetArch::kResNet18;
    config.encoder.trainable_stages = imcap::kResNetStages;  // from scratch: the CNN trains too
    config.image_resize = 64;  // from scratch the CNN sees the whole image
    config.image_crop = 64;
    imcap::CaptionModel model(config, imcap::Vocabulary::build({argv[1]}, {/*threshold=*/5}));

    imcap::CocoDataset train(argv[1], argv[2], model.vocab(), imcap::ImageTransform::train(64, 64));
    imcap::CocoDataset val(argv[3], argv[4], model.vocab(), model.eval_transform());

    imcap::TrainerOptions options;
    options.out_dir = argv[5];
    options.epochs = 10;
    options.max_seconds = argc > 6 ? std::stod(argv[6]) : 0.0;
    imcap::Trainer trainer(model, train, &val, options);
    imcap::Trainer::install_signal_handlers();
    const imcap::TrainResult result = trainer.fit();
    std::cout << result.steps << " steps; best BLEU-4 " << result.best_validation.bleu4
              << ", CIDEr " << result.best_validation.cider << "; models in " << options.out_dir
              << '\n';
  } catch (const imcap::Error& e) {
    std::cerr << "train_coco: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
