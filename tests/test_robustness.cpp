// Hostile and broken inputs, killed runs, full disks: the bad-input matrix of
// docs/reliability.md that the other test files do not already cover, the fuzz corpus replayed
// through the fuzz targets, and crash-safe training.
#include "catch.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "../fuzz/targets.hpp"
#include "detail/io.hpp"
#include "imcap/error.hpp"
#include "imcap/model.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/trainer.hpp"
#include "support.hpp"
#include "tiny.hpp"

using imcap::test::read_text;
using imcap::test::run_cli;
using imcap::test::TempDir;
using imcap::test::write_text;

namespace {

const std::string kFuzzDir = std::string(IMCAP_TEST_DATA_DIR) + "/../../fuzz";

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
  if (!d) return names;
  while (const dirent* e = ::readdir(d.get()))
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
      names.emplace_back(e->d_name);
  std::sort(names.begin(), names.end());
  return names;
}

bool running_as_root() { return ::geteuid() == 0; }

// The CLI's contract for bad input: exit code 1 and "imcap: error: <file>: <reason>".
void check_cli_error(const imcap::test::ProcessResult& r, const std::string& file,
                     const std::string& reason) {
  INFO("stderr: " << r.err);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::StartsWith("imcap: error: ") && Catch::Contains(file) &&
                        Catch::Contains(reason));
  CHECK(r.err.find("frame #") == std::string::npos);  // no C++ backtrace for the user
}

// A tiny random-weight model (ResNet-18, E 8, H 8), written once per test run.
const std::string& small_model() {
  static TempDir dir;
  static std::string path;
  if (path.empty()) {
    const auto vocab =
        imcap::Vocabulary::build_from_captions({"a red circle", "a blue square"}, {1});
    imcap::test::TinyConfig t;
    t.embed_size = 8;
    t.hidden_size = 8;
    imcap::test::tiny_model(vocab, 11, t).save(dir.file("small.imcap"));
    path = dir.file("small.imcap");
  }
  return path;
}

// A tiny synthetic dataset for training runs.
struct TinyData {
  TempDir tmp;
  imcap::SyntheticDataset files;
  TinyData() {
    imcap::SyntheticOptions so;
    so.train_images = 8;
    so.val_images = 2;
    so.image_size = 32;
    files = imcap::generate_synthetic_dataset(tmp.file("data"), so);
  }
  std::vector<std::string> train_args(const std::string& out) const {
    return {"train",
            "--annotations",
            files.train_annotations,
            "--images",
            files.train_images,
            "--val-annotations",
            files.val_annotations,
            "--val-images",
            files.val_images,
            "--out",
            out,
            "--encoder",
            "resnet18",
            "--trainable-stages",
            "none",
            "--image-size",
            "32",
            "--embed-size",
            "8",
            "--hidden-size",
            "8",
            "--vocab-threshold",
            "1",
            "--batch-size",
            "40",
            "--log-interval",
            "1",
            "--val-max-images",
            "2",
            "--flip-probability",
            "0",
            "--threads",
            "1",
            "--workers",
            "1"};
  }
};

// A child process that can be killed: stdout and stderr go to files in `log_dir`.
struct Child {
  pid_t pid = -1;
  int wait() {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
};

// Starts the CLI with args; `file_limit` > 0 caps the size of the files it writes (RLIMIT_FSIZE,
// with SIGXFSZ ignored, so writes past it fail with EFBIG as on a full disk).
Child spawn_cli(const std::vector<std::string>& args, const std::string& log_prefix,
                rlim_t file_limit = 0) {
  std::vector<std::string> argv{IMCAP_CLI_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string out = log_prefix + ".out", err = log_prefix + ".err";
  Child c;
  c.pid = ::fork();
  if (c.pid < 0) throw std::runtime_error("fork failed");
  if (c.pid == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (o < 0 || e < 0) ::_exit(126);
    ::dup2(o, 1);
    ::dup2(e, 2);
    if (file_limit > 0) {
      ::signal(SIGXFSZ, SIG_IGN);
      const rlimit lim{file_limit, file_limit};
      ::setrlimit(RLIMIT_FSIZE, &lim);
    }
    std::vector<char*> cargs;
    for (const auto& a : argv) cargs.push_back(const_cast<char*>(a.c_str()));
    cargs.push_back(nullptr);
    ::execv(cargs[0], cargs.data());
    ::_exit(127);
  }
  return c;
}

bool is_temp_name(const std::string& name) {
  return name.rfind(".last.imcap.tmp-", 0) == 0 || name.rfind(".best.imcap.tmp-", 0) == 0;
}

std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& n : list_dir(dir))
    if (n.find(".tmp-") != std::string::npos) out.push_back(n);
  return out;
}

// global_step saved in a model file's training state.
std::size_t saved_step(const std::string& path) {
  imcap::TrainingState state;
  imcap::CaptionModel::load(path, torch::kCPU, &state);
  return nlohmann::json::parse(state.json).at("global_step").get<std::size_t>();
}

}  // namespace

TEST_CASE("every fuzz corpus input, whole and truncated, only ever raises imcap::Error",
          "[robustness]") {
  std::size_t inputs = 0;
  for (const auto& [name, run] : imcap::fuzz::targets()) {
    const std::string dir = kFuzzDir + "/corpus/" + name;
    const auto files = list_dir(dir);
    INFO(dir);
    CHECK(files.size() >= 1);
    for (const auto& f : files) {
      const std::string bytes = read_text(dir + "/" + f);
      // The whole file, then cut at every 1/16 of its length: InvariantViolated or any other
      // foreign exception fails the test, as a crash would.
      for (int k = 16; k >= 0; --k) {
        INFO(name << "/" << f << " cut to " << k << "/16");
        CHECK_NOTHROW(run(std::string_view(bytes).substr(0, bytes.size() * k / 16)));
        ++inputs;
      }
    }
  }
  std::cerr << "[robustness] replayed " << inputs << " fuzz inputs\n";
}

TEST_CASE("imcap caption rejects broken images with the file and the reason, exit 1",
          "[robustness][cli]") {
  TempDir tmp;
  const auto& model = small_model();
  // A valid image to cut.
  imcap::test::write_pattern_png(tmp.file("ok.png"), 20, 14, 3);
  const std::string png = read_text(tmp.file("ok.png"));
  std::mt19937 rng(3);
  std::string noise(3000, '\0');
  for (auto& c : noise) c = static_cast<char>(rng() & 0xff);
  noise[0] = 'Z';
  const std::vector<std::tuple<std::string, std::string, std::string>> cases{
      {"empty.jpg", "", "empty file"},
      {"noise.jpg", noise, "unrecognised image format"},
      {"notes.png", "just some text\n", "unrecognised image format"},
      {"cut.png", png.substr(0, png.size() / 2), "PNG"},
      {"cut.jpg", std::string("\xff\xd8\xff\xe0\x00\x10JFIF\x00", 11), "JPEG"},
  };
  for (const auto& [name, bytes, reason] : cases) {
    INFO(name);
    write_text(tmp.file(name), bytes);
    check_cli_error(run_cli({"caption", "--model", model, tmp.file(name)}), tmp.file(name), reason);
  }
  check_cli_error(run_cli({"caption", "--model", model, tmp.file("missing.png")}),
                  tmp.file("missing.png"), "cannot open");
  check_cli_error(run_cli({"caption", "--model", model, tmp.path()}), tmp.path(), "is a directory");
  // Grayscale, RGBA and 1x1 images are captioned.
  imcap::test::write_png(tmp.file("gray.png"), 5, 4, 1, std::vector<unsigned char>(20, 90));
  imcap::test::write_png(tmp.file("rgba.png"), 3, 2, 4, std::vector<unsigned char>(24, 200));
  imcap::test::write_png(tmp.file("one.png"), 1, 1, 3, {200, 17, 99});
  const auto r = run_cli({"caption", "--model", model, tmp.file("gray.png"), tmp.file("rgba.png"),
                          tmp.file("one.png")});
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 3);
  // A file name that is not UTF-8 (legal on Linux) is captioned; --json shows the bad byte as
  // U+FFFD rather than failing.
  const std::string latin1 = tmp.file("caf\xe9.png");
  write_text(latin1, read_text(tmp.file("one.png")));
  const auto j = run_cli({"caption", "--model", model, "--json", latin1});
  INFO(j.err);
  CHECK(j.exit_code == 0);
  CHECK_THAT(j.out, Catch::Contains("caf\xef\xbf\xbd.png"));
}

TEST_CASE("annotation files: the CLI names the file and the problem, exit 1", "[robustness][cli]") {
  TempDir tmp;
  const std::vector<std::tuple<std::string, std::string, std::string>> cases{
      {"text.json", "hello", "not valid JSON"},
      {"array.json", "[1, 2]", "expected a JSON object"},
      {"nokey.json", R"({"images": []})", "missing key 'annotations'"},
      {"null.json",
       R"({"images": [{"id": 1, "file_name": "a.png"}],
           "annotations": [{"id": 1, "image_id": 1, "caption": null}]})",
       "annotations[0].caption: expected a string, got null"},
      {"escape.json",
       R"({"images": [{"id": 1, "file_name": "../../etc/passwd"}], "annotations": []})",
       "relative path inside the image folder"},
      {"absolute.json", R"({"images": [{"id": 1, "file_name": "/etc/passwd"}], "annotations": []})",
       "relative path inside the image folder"},
      {"nonutf8.json",
       "{\"images\":[{\"id\":1,\"file_name\":\"a.jpg\"}],\"annotations\":[{\"id\":1,"
       "\"image_id\":1,\"caption\":\"a \xff\xfe dog\"}]}",
       "annotations[0].caption: ill-formed UTF-8"},
      {"nul.json", R"({"images": [{"id": 1, "file_name": "a\u0000b.jpg"}], "annotations": []})",
       "images[0].file_name: 'a\\u0000b.jpg' contains a NUL"},
      {"overflow.json", R"({"images": [{"id": 1e400, "file_name": "a.jpg"}], "annotations": []})",
       "images[0].id: expected an integer"},
  };
  for (const auto& [name, text, reason] : cases) {
    INFO(name);
    write_text(tmp.file(name), text);
    check_cli_error(run_cli({"info", "--annotations", tmp.file(name)}), tmp.file(name), reason);
  }
  check_cli_error(run_cli({"info", "--annotations", tmp.file("missing.json")}),
                  tmp.file("missing.json"), "cannot open");
}

TEST_CASE("imcap train lists missing image files, or skips them with a warning when asked",
          "[robustness][cli][trainer]") {
  TinyData d;
  const auto names = list_dir(d.files.train_images);
  REQUIRE(names.size() == 8);
  const std::string victim = d.files.train_images + "/" + names[2];
  REQUIRE(std::remove(victim.c_str()) == 0);
  auto args = d.train_args(d.tmp.file("run"));
  args.insert(args.end(), {"--max-steps", "1"});
  check_cli_error(run_cli(args), names[2], "1 image file(s)");
  args.push_back("--skip-missing-images");
  const auto r = run_cli(args);
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.err, Catch::Contains("warning") && Catch::Contains(names[2]));
  CHECK(imcap::detail::is_regular_file(d.tmp.file("run/last.imcap")));
}

TEST_CASE("model and weight files: the CLI names the file and the problem, exit 1",
          "[robustness][cli]") {
  TempDir tmp;
  const std::string bytes = read_text(small_model());
  write_text(tmp.file("cut.imcap"), bytes.substr(0, bytes.size() / 3));
  check_cli_error(run_cli({"caption", "--model", tmp.file("cut.imcap"), "x.png"}),
                  tmp.file("cut.imcap"), "");
  std::string magic = bytes;
  magic[7] = '\x7f';  // the header length now runs far past the end of the file
  write_text(tmp.file("magic.imcap"), magic);
  check_cli_error(run_cli({"caption", "--model", tmp.file("magic.imcap"), "x.png"}),
                  tmp.file("magic.imcap"), "runs past the end");
  // A pickle asking for os.system, inside a torch.save zip: refused, and nothing runs.
  const std::string evil = kFuzzDir + "/corpus/weights/evil.pt";
  const std::string cwd = tmp.path();
  const auto r = imcap::test::run_process(
      {"/bin/sh", "-c",
       "cd '" + cwd + "' && exec '" IMCAP_CLI_PATH "' weights inspect '" + evil + "'"});
  check_cli_error(r, "evil.pt", "posix.system");
  CHECK_FALSE(imcap::detail::path_exists(tmp.file("PWNED")));
  // A weight file for another network: the error names the file, and only the first keys.
  imcap::TensorMap wrong;
  wrong.insert("features.0.weight", torch::zeros({4}));
  imcap::save_safetensors(tmp.file("wrong.safetensors"), wrong);
  write_text(tmp.file("ann.json"), R"({"images": [{"id": 1, "file_name": "a.png"}],
    "annotations": [{"id": 1, "image_id": 1, "caption": "a b"}]})");
  imcap::test::write_pattern_png(tmp.file("a.png"), 32, 32, 1);
  for (const std::string command : {"features", "train"}) {
    const auto w =
        run_cli({command, "--annotations", tmp.file("ann.json"), "--images", tmp.path(),
                 "--encoder", "resnet18", "--image-size", "32", "--out", tmp.file(command + ".out"),
                 "--weights", tmp.file("wrong.safetensors")});
    check_cli_error(w, tmp.file("wrong.safetensors") + ": load_state_dict: ", "missing key(s)");
    CHECK_THAT(w.err, Catch::Contains("more") && Catch::Contains("1 unexpected key(s)"));
  }
}

TEST_CASE("a model file whose config asks for huge tensors is refused before allocation",
          "[robustness]") {
  TempDir tmp;
  std::map<std::string, std::string> meta;
  const auto tensors = imcap::load_safetensors(small_model(), &meta);
  auto config = nlohmann::json::parse(meta.at("config"));
  config["decoder"]["hidden_size"] = 1 << 20;  // an LSTM of 2^42 weights: 16 TiB
  meta["config"] = config.dump();
  imcap::save_safetensors(tmp.file("huge.imcap"), tensors, meta);
  CHECK_THROWS_AS(imcap::CaptionModel::load(tmp.file("huge.imcap")), imcap::FormatError);
  CHECK_THROWS_WITH(
      imcap::CaptionModel::load(tmp.file("huge.imcap")),
      Catch::Contains("huge.imcap") && Catch::Contains("the config needs at least 4398"));
  // The vocabulary and the tensors alone do not make a model either.
  imcap::save_safetensors(tmp.file("empty.imcap"), imcap::TensorMap{}, meta);
  CHECK_THROWS_WITH(imcap::CaptionModel::load(tmp.file("empty.imcap")),
                    Catch::Contains("the file holds 0"));
}

TEST_CASE("CLI paths and numbers: missing, unreadable, unwritable, invalid", "[robustness][cli]") {
  TempDir tmp;
  const auto& model = small_model();
  write_text(tmp.file("ann.json"), R"({"images": [{"id": 1, "file_name": "a.png"}],
    "annotations": [{"id": 1, "image_id": 1, "caption": "a red circle"}]})");
  write_text(tmp.file("file"), "not a folder");
  // Output under a regular file: no folder can be made there, root or not.
  check_cli_error(run_cli({"vocab", "--annotations", tmp.file("ann.json"), "--out",
                           tmp.file("file/vocab.txt")}),
                  "file/vocab.txt", "");
  check_cli_error(run_cli({"synth", "--out", tmp.file("file/data"), "--train", "1", "--val", "0"}),
                  tmp.file("file"), "exists and is not a folder");
  check_cli_error(
      run_cli({"vocab", "--annotations", tmp.file("nope.json"), "--out", tmp.file("v.txt")}),
      tmp.file("nope.json"), "cannot open");
  // Invalid numbers are usage errors (exit 2) naming the option.
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"caption", "--model", model, "--beam", "abc", "x.png"},
           {"caption", "--model", model, "--max-length", "-3", "x.png"},
           {"caption", "--model", model, "--blas-threads", "0", "x.png"},
           {"caption", "--model", model, "--decode-weights", "fp8", "x.png"},
           {"train", "--annotations", tmp.file("ann.json"), "--features", "f.safetensors", "--out",
            tmp.file("r"), "--blas-threads", "many"},
           {"synth", "--out", tmp.file("s"), "--size", "1e99"},
           {"vocab", "--annotations", tmp.file("ann.json"), "--out", tmp.file("v"), "--threshold",
            "lots"},
           // Thread counts are bounded (100,000 threads would take minutes to start), and NaN,
           // infinities and overflowing values are refused where CLI11's ranges let them through.
           {"caption", "--model", model, "--threads", "100000", "x.png"},
           {"caption", "--model", model, "--threads", "-1", "x.png"},
           {"caption", "--model", model, "--alpha", "nan", "x.png"},
           {"train", "--annotations", tmp.file("ann.json"), "--features", "f.safetensors", "--out",
            tmp.file("r"), "--lr", "nan"},
           {"train", "--annotations", tmp.file("ann.json"), "--features", "f.safetensors", "--out",
            tmp.file("r"), "--clip", "inf"},
           {"train", "--annotations", tmp.file("ann.json"), "--features", "f.safetensors", "--out",
            tmp.file("r"), "--max-seconds", "nan"},
           {"train", "--annotations", tmp.file("ann.json"), "--features", "f.safetensors", "--out",
            tmp.file("r"), "--dist-timeout", "1e18"},
           {"train", "--annotations", tmp.file("ann.json"), "--features", "f.safetensors", "--out",
            tmp.file("r"), "--flip-probability", "nan"},
           {"bench", "--data-threads", "5000"}}) {
    const auto r = run_cli(args);
    INFO(args[0] << " " << r.err);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Catch::Contains("--"));
    CHECK_THAT(r.err, !Catch::Contains("179769313486231570"));  // no DBL_MAX in the message
  }
  const auto unknown = run_cli({"nosuch", "--help"});
  CHECK(unknown.exit_code == 2);
  CHECK_THAT(unknown.err, Catch::Contains("unknown command 'nosuch'"));
  if (running_as_root()) {
    WARN("running as root, which ignores file modes: unreadable and unwritable paths not tested");
    return;
  }
  ::chmod(tmp.file("ann.json").c_str(), 0);
  check_cli_error(run_cli({"info", "--annotations", tmp.file("ann.json")}), tmp.file("ann.json"),
                  "Permission denied");
  ::chmod(tmp.file("ann.json").c_str(), 0644);
  imcap::detail::create_directories(tmp.file("ro"));
  ::chmod(tmp.file("ro").c_str(), 0555);
  check_cli_error(
      run_cli({"vocab", "--annotations", tmp.file("ann.json"), "--out", tmp.file("ro/v.txt")}),
      tmp.file("ro/v.txt"), "Permission denied");
  ::chmod(tmp.file("ro").c_str(), 0755);
}

TEST_CASE("write_file_atomic reports a full disk and leaves no partial file", "[robustness]") {
  TempDir tmp;
  const std::string path = tmp.file("out.bin");
  imcap::detail::write_file_atomic(path, "old content");
  // RLIMIT_FSIZE makes write() fail with EFBIG past the limit, as a full disk does with ENOSPC.
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
  const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  rlimit lim = saved;
  lim.rlim_cur = 4096;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
  std::string error;
  try {
    imcap::detail::write_file_atomic(path, std::string(1 << 20, 'x'));
  } catch (const imcap::IoError& e) {
    error = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, old_handler);
  CHECK_THAT(error, Catch::Contains(path) && Catch::Contains("cannot write"));
  CHECK(read_text(path) == "old content");
  CHECK(list_dir(tmp.path()) == std::vector<std::string>{"out.bin"});
  // A folder that is not there, or not a folder.
  CHECK_THROWS_AS(imcap::detail::write_file_atomic(tmp.file("no/such/dir/f"), "x"), imcap::IoError);
  CHECK_THROWS_WITH(imcap::detail::write_file_atomic(tmp.file("out.bin/f"), "x"),
                    Catch::Contains("out.bin/f"));
  // Stale temporary files of a killed writer are recognisable and removable.
  write_text(tmp.file(".out.bin.tmp-0123abcd"), "partial");
  write_text(tmp.file(".out.bin.tmp-notmine"), "someone else's");
  CHECK(imcap::detail::remove_stale_temp_files(path) == 1);
  CHECK(list_dir(tmp.path()) == std::vector<std::string>{".out.bin.tmp-notmine", "out.bin"});
}

TEST_CASE("write_file_atomic follows links, keeps modes, and writes devices and pipes in place",
          "[robustness]") {
  TempDir tmp;
  using imcap::detail::write_file_atomic;
  // A link to a file: the file gets the new content and the link stays a link.
  write_text(tmp.file("target.txt"), "old");
  REQUIRE(::symlink("target.txt", tmp.file("link.txt").c_str()) == 0);
  write_file_atomic(tmp.file("link.txt"), "new");
  struct stat st {};
  REQUIRE(::lstat(tmp.file("link.txt").c_str(), &st) == 0);
  CHECK(S_ISLNK(st.st_mode));
  CHECK(read_text(tmp.file("target.txt")) == "new");
  // A dangling link creates the file it names, as open() would.
  REQUIRE(::symlink("created.txt", tmp.file("dangling.txt").c_str()) == 0);
  write_file_atomic(tmp.file("dangling.txt"), "made");
  CHECK(read_text(tmp.file("created.txt")) == "made");
  // A replaced file keeps its permissions.
  ::chmod(tmp.file("target.txt").c_str(), 0600);
  write_file_atomic(tmp.file("target.txt"), "again");
  REQUIRE(::stat(tmp.file("target.txt").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  // A device is written in place, not replaced by a regular file.
  write_file_atomic("/dev/null", "discarded");
  REQUIRE(::stat("/dev/null", &st) == 0);
  CHECK(S_ISCHR(st.st_mode));
  // A FIFO: its reader gets the bytes; without a reader, an error rather than a wait.
  REQUIRE(::mkfifo(tmp.file("fifo").c_str(), 0600) == 0);
  CHECK_THROWS_WITH(write_file_atomic(tmp.file("fifo"), "x"),
                    Catch::Contains("fifo") && Catch::Contains("no process is reading"));
  std::string received;
  std::thread reader([&] {
    std::ifstream in(tmp.file("fifo"));
    received.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  });
  bool written = false;
  for (int attempt = 0; attempt < 500 && !written; ++attempt) {  // until the reader has opened it
    try {
      write_file_atomic(tmp.file("fifo"), "through the pipe");
      written = true;
    } catch (const imcap::IoError&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  if (!written) {  // unblock the reader before failing
    std::ofstream(tmp.file("fifo")) << "";
  }
  reader.join();
  CHECK(written);
  CHECK(received == "through the pipe");
  REQUIRE(::lstat(tmp.file("fifo").c_str(), &st) == 0);
  CHECK(S_ISFIFO(st.st_mode));
  // A folder is not overwritten.
  imcap::detail::create_directories(tmp.file("folder"));
  CHECK_THROWS_WITH(write_file_atomic(tmp.file("folder"), "x"), Catch::Contains("is a folder"));
}

TEST_CASE("the CLI refuses an output file that is one of its inputs, exit 2", "[robustness][cli]") {
  TempDir tmp;
  const auto& model = small_model();
  const std::string copy = tmp.file("model.imcap");
  write_text(copy, read_text(model));
  write_text(tmp.file("ann.json"), R"({"images": [{"id": 1, "file_name": "a.png"}],
    "annotations": [{"id": 1, "image_id": 1, "caption": "a red circle"}]})");
  write_text(tmp.file("res.json"), R"([{"image_id": 1, "caption": "a red circle"}])");
  REQUIRE(::link(tmp.file("ann.json").c_str(), tmp.file("hard.json").c_str()) == 0);
  const std::string ann = read_text(tmp.file("ann.json"));
  const std::string res = read_text(tmp.file("res.json"));
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"predict", "--model", copy, "--annotations", tmp.file("ann.json"), "--images",
            tmp.path(), "--out", copy},
           {"vocab", "--annotations", tmp.file("ann.json"), "--out", tmp.file("hard.json")},
           {"eval", "--annotations", tmp.file("ann.json"), "--results", tmp.file("res.json"),
            "--per-image", tmp.file("res.json")},
           {"weights", "convert", copy, "--out", copy},
           {"features", "--annotations", tmp.file("ann.json"), "--images", tmp.path(), "--out",
            tmp.file("ann.json")}}) {
    const auto r = run_cli(args);
    INFO(args[0] << ": " << r.err);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Catch::Contains("is the same file as"));
  }
  CHECK(read_text(copy) == read_text(model));
  CHECK(read_text(tmp.file("ann.json")) == ann);
  CHECK(read_text(tmp.file("res.json")) == res);
  const auto empty = run_cli({"weights", "convert", copy, "--out", ""});
  CHECK(empty.exit_code == 2);
  CHECK_THAT(empty.err, Catch::Contains("--out: expected a file name"));
  const auto twice = run_cli(
      {"weights", "convert", copy, "--out", tmp.file("w.safetensors"), "--metadata", "a=1", "a=2"});
  CHECK(twice.exit_code == 2);
  CHECK_THAT(twice.err, Catch::Contains("'a' given twice"));
  const auto latin1 = run_cli(
      {"weights", "convert", copy, "--out", tmp.file("w.safetensors"), "--metadata", "a=caf\xe9"});
  CHECK(latin1.exit_code == 2);
  CHECK_THAT(latin1.err, Catch::Contains("--metadata: ill-formed UTF-8"));
}

TEST_CASE("a full disk during training and a full stdout are errors, exit 1", "[robustness][cli]") {
  TinyData d;
  const std::string out = d.tmp.file("run");
  auto args = d.train_args(out);
  args.insert(args.end(), {"--max-steps", "1"});
  // 1 MiB is enough for the log but not for last.imcap (about 45 MB).
  Child c = spawn_cli(args, d.tmp.file("full"), 1 << 20);
  const int code = c.wait();
  const std::string err = read_text(d.tmp.file("full.err"));
  INFO(err);
  CHECK(code == 1);
  // The first checkpoint written fails (best.imcap after the validation, or last.imcap).
  CHECK_THAT(err, Catch::Contains("\nimcap: error: " + out + "/") &&
                      Catch::Contains(".imcap: cannot write: ") && Catch::EndsWith("\n"));
  CHECK_FALSE(imcap::detail::path_exists(out + "/last.imcap"));
  CHECK_FALSE(imcap::detail::path_exists(out + "/best.imcap"));
  CHECK(temp_files(out).empty());
  // /dev/full: every write fails with ENOSPC.
  const auto r = imcap::test::run_process({"/bin/sh", "-c",
                                           "exec '" IMCAP_CLI_PATH "' info --json --annotations '" +
                                               d.files.val_annotations + "' > /dev/full"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::StartsWith("imcap: error: <stdout>: cannot write"));
}

TEST_CASE("a non-finite loss stops training naming the step, and keeps the last checkpoint",
          "[robustness][trainer]") {
  TinyData d;
  const auto vocab = imcap::Vocabulary::build({d.files.train_annotations}, {1});
  imcap::test::TinyConfig t;
  t.embed_size = 8;
  t.hidden_size = 8;
  imcap::CaptionModel model = imcap::test::tiny_model(vocab, 5, t);
  imcap::CocoDataset train(d.files.train_annotations, d.files.train_images, vocab,
                           model.eval_transform());
  imcap::TrainerOptions o;
  o.out_dir = d.tmp.file("run");
  o.epochs = 5;
  o.batch_size = 10;
  o.batching = imcap::BatchMode::kImageMajor;
  o.workers = 1;
  o.progress = false;
  o.max_steps = 2;
  imcap::Trainer trainer(model, train, nullptr, o);
  CHECK(trainer.fit().steps == 2);
  const std::string last = d.tmp.file("run/last.imcap");
  const std::string good = read_text(last);
  {
    // Weights that make the next loss NaN, as a diverging run would.
    torch::NoGradGuard no_grad;
    model.decoder()->linear->weight.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  CHECK_THROWS_WITH(trainer.fit(), Catch::Contains("the loss is nan at step 3") &&
                                       Catch::Contains("the last checkpoint " + last + " is kept"));
  CHECK(read_text(last) == good);
  CHECK(saved_step(last) == 2);
}

TEST_CASE(
    "SIGKILL at random moments, during checkpoint writes too, never corrupts a "
    "checkpoint, and resume works",
    "[robustness][trainer][cli]") {
  TinyData d;
  const std::string out = d.tmp.file("run");
  auto args = d.train_args(out);
  args.insert(args.end(), {"--epochs", "1000"});
  std::mt19937 rng(2026);
  int kills = 0, during_write = 0;
  std::size_t last_step = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (int round = 0; round < 8 && std::chrono::steady_clock::now() < deadline; ++round) {
    auto run_args = args;
    if (imcap::detail::path_exists(out + "/last.imcap")) run_args.push_back("--resume");
    // Temporary files of the previous round's victim do not count as a write of this round.
    const auto stale = temp_files(out);
    const auto writing = [&] {
      for (const auto& name : temp_files(out))
        if (std::find(stale.begin(), stale.end(), name) == stale.end()) return true;
      return false;
    };
    // The checkpoint on disk before this round: an even round's clock starts when it is replaced.
    const auto checkpoint_id = [&] {
      struct ::stat st {};
      if (::stat((out + "/last.imcap").c_str(), &st) != 0) return std::tuple<ino_t, long, long>{};
      return std::tuple<ino_t, long, long>{st.st_ino, st.st_mtim.tv_sec, st.st_mtim.tv_nsec};
    };
    const auto before = checkpoint_id();
    Child c = spawn_cli(run_args, d.tmp.file("log" + std::to_string(round)));
    // Odd rounds wait for a checkpoint write to begin, then kill within 0-5 ms of it (a write
    // can finish in well under 100 ms). Even rounds wait until this round has written a
    // checkpoint, then kill at a random moment 0-2 s later: in a step, in validation, in the next
    // write. (Counting from the start instead let a slow machine kill every round before its
    // first checkpoint, so no round ever made progress.)
    const bool at_write = round % 2 == 1;
    const int delay_ms = std::uniform_int_distribution<>(0, 2000)(rng);
    const auto start = std::chrono::steady_clock::now();
    auto limit = start + std::chrono::seconds(20);
    bool exited = false, clock_started = false;
    while (std::chrono::steady_clock::now() < limit) {
      if (at_write && writing()) {
        std::this_thread::sleep_for(
            std::chrono::microseconds(std::uniform_int_distribution<>(0, 5000)(rng)));
        break;
      }
      if (!at_write && !clock_started && checkpoint_id() != before) {
        clock_started = true;
        limit = std::chrono::steady_clock::now() + std::chrono::milliseconds(delay_ms);
      }
      int status = 0;
      if (::waitpid(c.pid, &status, WNOHANG) == c.pid) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(at_write ? 1 : 5));
    }
    INFO("round " << round << ": "
                  << read_text(d.tmp.file("log" + std::to_string(round) + ".err")));
    REQUIRE_FALSE(exited);
    if (!at_write) REQUIRE(clock_started);  // a round that never wrote a checkpoint in 20 s
    during_write += writing();
    ::kill(c.pid, SIGKILL);
    CHECK(c.wait() == 128 + SIGKILL);
    ++kills;
    // Whatever is on disk loads, and never goes back in time.
    for (const auto& name : list_dir(out)) {
      INFO(name);
      CHECK((name == "last.imcap" || name == "best.imcap" || name == "log.jsonl" ||
             is_temp_name(name)));
    }
    if (imcap::detail::path_exists(out + "/best.imcap"))
      CHECK_NOTHROW(imcap::CaptionModel::load(out + "/best.imcap"));
    if (imcap::detail::path_exists(out + "/last.imcap")) {
      const std::size_t step = saved_step(out + "/last.imcap");
      CHECK(step >= last_step);
      last_step = step;
    }
  }
  std::cerr << "[robustness] " << kills << " SIGKILLs, " << during_write
            << " of them while a checkpoint was being written\n";
  CHECK(kills >= 4);
  CHECK(during_write >= 1);
  REQUIRE(imcap::detail::path_exists(out + "/last.imcap"));
  // A kill in the middle of a log line: the resumed run starts on a fresh line.
  {
    std::ofstream log(out + "/log.jsonl", std::ios::app);
    log << R"({"type": "step", "epo)";
  }
  auto resume = args;
  resume.insert(resume.end(), {"--resume", "--max-steps", std::to_string(last_step + 2)});
  const auto r = run_cli(resume);
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(saved_step(out + "/last.imcap") == last_step + 2);
  CHECK(temp_files(out).empty());  // the stale ones were removed on start
  std::istringstream log(read_text(out + "/log.jsonl"));
  std::string line;
  int lines = 0;
  while (std::getline(log, line)) {
    INFO(line);
    CHECK_NOTHROW(nlohmann::json::parse(line));
    ++lines;
  }
  CHECK(lines >= 2);
}
