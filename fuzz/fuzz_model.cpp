// libFuzzer driver for imcap::fuzz::model (fuzz/targets.hpp).
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  imcap::fuzz::model(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
