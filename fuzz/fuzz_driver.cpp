// The libFuzzer entry point shared by every fuzz_<target> executable: the target is the one of
// fuzz/targets.hpp named by the executable (fuzz_image -> imcap::fuzz::image). One object file
// for all of them, so that the LibTorch-heavy headers are compiled once.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "targets.hpp"

namespace {

void (*g_target)(std::string_view) = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  const char* exe = std::strrchr((*argv)[0], '/');
  exe = exe == nullptr ? (*argv)[0] : exe + 1;
  for (const auto& [name, run] : imcap::fuzz::targets())
    if (std::strcmp(exe, (std::string("fuzz_") + name).c_str()) == 0) g_target = run;
  if (g_target == nullptr) {
    std::fprintf(stderr, "%s: not the name of a fuzz target (fuzz_<target>)\n", exe);
    std::exit(2);
  }
  (void)argc;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  g_target(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
