// Uses imcap through its installed headers and exported target only.
#include <imcap/imcap.hpp>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: consumer ANNOTATIONS.json\n";
    return 2;
  }
  try {
    const auto vocab = imcap::Vocabulary::build({argv[1]}, {/*threshold=*/1});
    const auto ids = vocab.encode("A man riding a horse.");
    std::cout << "imcap " << imcap::kVersion << ": " << vocab.size() << " tokens; "
              << vocab.decode(ids) << '\n';
    return vocab.size() > 4 && ids.size() == 8 ? 0 : 1;
  } catch (const imcap::Error& e) {
    std::cerr << "consumer: " << e.what() << '\n';
    return 1;
  }
}
