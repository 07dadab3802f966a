#include "support.hpp"

#include <torch/torch.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ftw.h>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb_image_write.h>

extern char** environ;  // POSIX: the process environment

namespace imcap::test {

imcap::Decoder eval_decoder(int64_t vocab, int64_t embed, int64_t hidden, uint64_t seed,
                            imcap::ImageInject inject) {
  torch::manual_seed(seed);
  imcap::DecoderOptions options;
  options.image_inject = inject;
  options.vocab_size = vocab;
  options.embed_size = embed;
  options.hidden_size = hidden;
  imcap::Decoder decoder(options);
  decoder->eval();
  return decoder;
}

std::string data_path(const std::string& name) {
  return std::string(IMCAP_TEST_DATA_DIR) + "/" + name;
}

std::string python_script(const std::string& name) {
  return std::string(IMCAP_TEST_PYTHON_DIR) + "/" + name;
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/imcap-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  // Depth-first removal; std::filesystem is avoided (see detail/io.hpp).
  ::nftw(
      path_.c_str(),
      [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p) == 0 ? 0 : 0; },
      16, FTW_DEPTH | FTW_PHYS);
}

std::string TempDir::file(const std::string& name) const { return path_ + "/" + name; }

int start_process(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                  const std::string& out_path, const std::string& err_path) {
  // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
  std::vector<std::string> env_strings;
  for (char** p = environ; *p != nullptr; ++p) env_strings.emplace_back(*p);
  env_strings.insert(env_strings.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> envp, args;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int in = ::open("/dev/null", O_RDONLY);
    if (out < 0 || err < 0 || in < 0) ::_exit(126);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

ProcessResult run_process(const std::vector<std::string>& argv) {
  TempDir tmp;
  const std::string out_path = tmp.file("out"), err_path = tmp.file("err");
  const pid_t pid = start_process(argv, {}, out_path, err_path);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  ProcessResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(out_path);
  r.err = read_text(err_path);
  return r;
}

ProcessResult run_cli(const std::vector<std::string>& args) {
  const std::string cli = IMCAP_CLI_PATH;
  if (cli.empty()) throw std::runtime_error("the imcap CLI was not built (IMCAP_BUILD_CLI=OFF)");
  std::vector<std::string> argv{cli};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv);
}

ProcessResult run_python(const std::string& script, const std::vector<std::string>& args) {
  std::vector<std::string> argv{IMCAP_PYTHON, python_script(script)};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv);
}

void write_png(const std::string& path, int width, int height, int channels,
               const std::vector<unsigned char>& pixels) {
  if (pixels.size() != static_cast<std::size_t>(width) * height * channels)
    throw std::runtime_error("write_png: wrong pixel count for " + path);
  if (stbi_write_png(path.c_str(), width, height, channels, pixels.data(), width * channels) == 0)
    throw std::runtime_error("write_png: cannot write " + path);
}

void write_pattern_png(const std::string& path, int width, int height, unsigned seed) {
  std::vector<unsigned char> px(static_cast<std::size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c)
        px[(static_cast<std::size_t>(y) * width + x) * 3 + c] =
            static_cast<unsigned char>((x * (c + 1) * 7 + y * 3 + seed * 41 + c * 50) % 256);
  write_png(path, width, height, 3, px);
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  if (!f) throw std::runtime_error("cannot write " + path);
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace imcap::test
