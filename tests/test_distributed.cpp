// Data-parallel training on c10d's Gloo over loopback: two processes against one process on the
// whole batch, a killed and a hung rank, resume, and `imcap train --nproc`.
#include "catch.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <thread>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/io.hpp"
#include "imcap/distributed.hpp"
#include "imcap/error.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/trainer.hpp"
#include "support.hpp"
#include "tiny.hpp"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// A child process with extra environment variables and its output in files; never outlives
// the test (killed in the destructor).
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::vector<std::string>& env,
        const std::string& out_path, const std::string& err_path)
      : pid_(imcap::test::start_process(argv, env, out_path, err_path)) {}
  ~Child() {
    if (!status_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  void signal(int sig) { ::kill(pid_, sig); }
  /// The exit code (128 + signal when killed), or nullopt while it still runs after `seconds`.
  std::optional<int> wait_for(double seconds) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    while (!status_) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        break;
      }
      if (Clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return status_;
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

std::string own_executable() {
  std::string buf(4096, '\0');
  const auto n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) throw std::runtime_error("readlink /proc/self/exe failed");
  buf.resize(static_cast<std::size_t>(n));
  return buf;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error("no free port");
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::vector<std::string> rank_env(int rank, int world, int port) {
  return {"RANK=" + std::to_string(rank),
          "LOCAL_RANK=" + std::to_string(rank),
          "WORLD_SIZE=" + std::to_string(world),
          "LOCAL_WORLD_SIZE=" + std::to_string(world),
          "MASTER_ADDR=127.0.0.1",
          "MASTER_PORT=" + std::to_string(port),
          "OMP_NUM_THREADS=1"};
}

imcap::SyntheticDataset tiny_data(const std::string& dir) {
  imcap::SyntheticOptions so;
  so.train_images = 12;
  so.val_images = 4;
  so.image_size = 32;
  return imcap::generate_synthetic_dataset(dir, so);
}

imcap::SyntheticDataset data_in(const std::string& dir) {
  return {dir + "/captions_train.json", dir + "/train", dir + "/captions_val.json", dir + "/val"};
}

// A frozen CNN (no train-mode BatchNorm: per-rank batch statistics would differ from the whole
// batch's) under a trainable embedding and LSTM, without dropout; or the attention decoder over
// the frozen CNN's 2 x 2 grid.
imcap::CaptionModel tiny_model(const imcap::Vocabulary& vocab, std::uint64_t seed,
                               bool attention = false) {
  if (attention) {
    torch::manual_seed(seed);
    return imcap::CaptionModel(imcap::test::tiny_attention_config(), vocab);
  }
  imcap::test::TinyConfig t;
  t.inject = imcap::ImageInject::kPar;
  return imcap::test::tiny_model(vocab, seed, t);
}

// SGD at a moderate rate: Adam divides by the gradients' running RMS, which turns float rounding
// in near-zero gradients into visible differences, and a large rate amplifies rounding from step
// to step (at lr 0.5 the weights drift 1.6e-5 apart in 12 steps; at 0.1, 6e-8).
imcap::TrainerOptions tiny_options(const std::string& out) {
  imcap::TrainerOptions o;
  o.out_dir = out;
  o.epochs = 2;
  o.batch_size = 10;
  o.batching = imcap::BatchMode::kPadded;  // ranks get different token counts
  o.optimizer = imcap::Optimizer::kSgd;
  o.lr = 0.1;
  o.workers = 0;
  o.progress = false;
  o.val_max_images = 4;
  o.log_interval = 1;
  return o;
}

std::vector<std::string> train_args(const imcap::SyntheticDataset& f, const std::string& out) {
  return imcap::test::tiny_train_args(
      f, out,
      {"--batch-size", "10", "--flip-probability", "0", "--workers", "0", "--log-interval", "1",
       "--val-max-images", "4", "--trainable-stages", "none"});
}

// The value of `key` in each step line of a log.jsonl.
std::vector<double> logged(const std::string& log_path, const char* key) {
  std::vector<double> values;
  std::ifstream log(log_path);
  std::string line;
  while (std::getline(log, line)) {
    const auto j = json::parse(line);
    if (j["type"] == "step") values.push_back(j[key].get<double>());
  }
  return values;
}

std::vector<double> logged_losses(const std::string& log_path) { return logged(log_path, "loss"); }

std::string file_text(const std::string& path) {
  return imcap::detail::path_exists(path) ? imcap::test::read_text(path) : std::string();
}

}  // namespace

// Not a test by itself (hidden): the process that the first test below starts once per rank.
TEST_CASE("distributed training worker", "[.distributed_worker]") {
  const char* dir = std::getenv("IMCAP_TEST_DIST_DIR");
  if (dir == nullptr) return;
  torch::set_num_threads(1);
  const auto env = imcap::distributed_options_from_env();
  REQUIRE(env);
  auto group = std::make_shared<imcap::ProcessGroup>(*env);
  const auto f = data_in(std::string(dir) + "/data");
  const auto vocab = imcap::Vocabulary::build({f.train_annotations}, {1});
  // Each rank starts from other weights: the trainer must broadcast rank 0's.
  const char* kind = std::getenv("IMCAP_TEST_DIST_KIND");
  auto model = tiny_model(vocab, 5 + static_cast<std::uint64_t>(group->rank()),
                          kind != nullptr && std::string(kind) == "attention");
  imcap::CocoDataset train(f.train_annotations, f.train_images, vocab, model.eval_transform());
  imcap::CocoDataset val(f.val_annotations, f.val_images, vocab, model.eval_transform());
  const std::string rank = std::to_string(group->rank());
  auto o = tiny_options(std::string(dir) + "/out" + rank);
  o.process_group = group;
  o.bucket_bytes = 4096;  // several buckets even for this tiny model
  const auto r = imcap::Trainer(model, train, &val, o).fit();
  model.save(std::string(dir) + "/rank" + rank + ".imcap");
  imcap::test::write_text(std::string(dir) + "/rank" + rank + ".json",
                          json{{"losses", r.losses},
                               {"val_loss", r.last_validation.loss},
                               {"cider", r.last_validation.cider},
                               {"steps", r.steps}}
                              .dump());
}

TEST_CASE("two processes train exactly as one process on the whole batch", "[distributed]") {
  const bool attention = GENERATE(false, true);
  INFO((attention ? "attention" : "Show and Tell"));
  imcap::test::TempDir tmp;
  const auto f = tiny_data(tmp.file("data"));
  const int port = free_port();
  std::vector<std::unique_ptr<Child>> ranks;
  for (int r = 0; r < 2; ++r) {
    auto env = rank_env(r, 2, port);
    env.push_back("IMCAP_TEST_DIST_DIR=" + tmp.path());
    env.push_back(std::string("IMCAP_TEST_DIST_KIND=") + (attention ? "attention" : "show-tell"));
    ranks.push_back(std::make_unique<Child>(
        std::vector<std::string>{own_executable(), "distributed training worker"}, env,
        tmp.file("out" + std::to_string(r) + ".txt"),
        tmp.file("err" + std::to_string(r) + ".txt")));
  }
  for (int r = 0; r < 2; ++r) {
    const auto code = ranks[static_cast<std::size_t>(r)]->wait_for(120);
    INFO("rank " << r << ": " << file_text(tmp.file("out" + std::to_string(r) + ".txt"))
                 << file_text(tmp.file("err" + std::to_string(r) + ".txt")));
    REQUIRE(code == std::optional<int>(0));
  }

  // The same training in this process, on the whole batches.
  const auto vocab = imcap::Vocabulary::build({f.train_annotations}, {1});
  auto model = tiny_model(vocab, 5, attention);
  imcap::CocoDataset train(f.train_annotations, f.train_images, vocab, model.eval_transform());
  imcap::CocoDataset val(f.val_annotations, f.val_images, vocab, model.eval_transform());
  const auto one = imcap::Trainer(model, train, &val, tiny_options(tmp.file("one"))).fit();

  const auto rank0 = imcap::CaptionModel::load(tmp.file("rank0.imcap"));
  const auto rank1 = imcap::CaptionModel::load(tmp.file("rank1.imcap"));
  auto params = [](const imcap::CaptionModel& m) {
    auto p = m.encoder()->named_parameters();
    for (const auto& d : m.decoder_module().named_parameters())
      p.insert("decoder." + d.key(), d.value());
    return p;
  };
  const auto p0 = params(rank0), p1 = params(rank1), p = params(model);
  REQUIRE(p0.size() == p.size());
  double largest = 0.0;
  for (const auto& item : p) {
    INFO(item.key());
    CHECK(torch::equal(p0[item.key()], p1[item.key()]));
    largest = std::max(largest, (p0[item.key()] - item.value()).abs().max().item<double>());
  }
  // Float rounding only: the ranks sum in another order (the attention model's softmax and
  // penalty amplify it a little more than the LSTM; without the penalty's weighting by captions
  // its losses were 1.0 apart).
  CHECK(largest < (attention ? 5e-5 : 1e-5));
  // Training changed the trainable weights (the comparison is not of untouched tensors).
  const auto untouched = params(tiny_model(vocab, 5, attention));
  std::size_t changed = 0;
  for (const auto& item : p) changed += torch::equal(item.value(), untouched[item.key()]) ? 0 : 1;
  CHECK(changed > 0);

  const auto j0 = json::parse(imcap::test::read_text(tmp.file("rank0.json")));
  const auto j1 = json::parse(imcap::test::read_text(tmp.file("rank1.json")));
  const auto losses = j0["losses"].get<std::vector<double>>();
  REQUIRE(losses.size() == one.losses.size());
  CHECK(j1["losses"].get<std::vector<double>>() == losses);
  for (std::size_t i = 0; i < losses.size(); ++i)
    CHECK(losses[i] == Approx(one.losses[i]).margin(1e-5));
  CHECK(j0["steps"] == one.steps);
  CHECK(j0["val_loss"].get<double>() == Approx(one.last_validation.loss).margin(1e-5));
  CHECK(j0["cider"].get<double>() == Approx(one.last_validation.cider).margin(1e-9));
  CHECK(j1["cider"] == j0["cider"]);
  // Rank 0 alone wrote the checkpoints and the log, one line per step.
  CHECK(imcap::detail::path_exists(tmp.file("out0/last.imcap")));
  CHECK(imcap::detail::path_exists(tmp.file("out0/best.imcap")));
  CHECK(logged_losses(tmp.file("out0/log.jsonl")) == losses);
  CHECK_FALSE(imcap::detail::path_exists(tmp.file("out1")));
}

TEST_CASE("the data loader's shards are disjoint parts of the one-process batches",
          "[distributed][data_loader]") {
  imcap::test::TempDir tmp;
  const auto f = tiny_data(tmp.file("data"));
  const auto vocab = imcap::Vocabulary::build({f.train_annotations}, {1});
  imcap::CocoDataset data(f.train_annotations, f.train_images, vocab,
                          imcap::ImageTransform::eval(32, 32));
  for (const auto mode : {imcap::BatchMode::kPadded, imcap::BatchMode::kImageMajor}) {
    imcap::DataLoaderOptions o;
    o.batch_size = 7;
    o.mode = mode;
    o.workers = 0;
    o.load_images = false;
    imcap::DataLoader whole(data, o);
    std::vector<std::unique_ptr<imcap::DataLoader>> shards;
    for (std::size_t s = 0; s < 3; ++s) {
      auto so = o;
      so.shard_count = 3;
      so.shard_index = s;
      shards.push_back(std::make_unique<imcap::DataLoader>(data, so));
      shards.back()->start_epoch(1);
    }
    whole.start_epoch(1);
    std::size_t batches = 0;
    while (auto b = whole.next()) {
      ++batches;
      std::vector<std::size_t> joined;
      for (auto& s : shards) {
        const auto part = s->next();
        REQUIRE(part);
        CHECK(part->index == b->index);
        CHECK(part->global_size == b->size());
        joined.insert(joined.end(), part->caption_indices.begin(), part->caption_indices.end());
        // Whole images: no image is split between two shards.
        if (mode == imcap::BatchMode::kImageMajor)
          for (const auto id : part->image_ids)
            CHECK(std::count(b->image_ids.begin(), b->image_ids.end(), id) == 1);
      }
      CHECK(joined == b->caption_indices);
    }
    CHECK(batches > 2);
    for (auto& s : shards) CHECK_FALSE(s->next());
  }
  imcap::DataLoaderOptions bad;
  bad.shard_count = 2;
  bad.shard_index = 2;
  CHECK_THROWS_AS(imcap::DataLoader(data, bad), imcap::InvalidArgument);
}

TEST_CASE("torchrun's environment is read and checked", "[distributed]") {
  // The variables never outlive the test, even when it fails (the CLI tests' children would
  // inherit them).
  struct Restore {
    ~Restore() {
      for (const char* name : {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"})
        ::unsetenv(name);
    }
  } restore;
  auto set = [](const char* name, const char* value) {
    if (value == nullptr)
      ::unsetenv(name);
    else
      ::setenv(name, value, 1);
  };
  set("WORLD_SIZE", nullptr);
  CHECK_FALSE(imcap::distributed_options_from_env());
  set("WORLD_SIZE", "4");
  set("RANK", "3");
  set("LOCAL_RANK", "1");
  set("MASTER_ADDR", "node7");
  set("MASTER_PORT", "29400");
  const auto o = imcap::distributed_options_from_env();
  REQUIRE(o);
  CHECK(o->world_size == 4);
  CHECK(o->rank == 3);
  CHECK(o->local_rank == 1);
  CHECK(o->master_addr == "node7");
  CHECK(o->master_port == 29400);
  CHECK_FALSE(o->agent_store);
  set("RANK", "4");
  CHECK_THROWS_WITH(imcap::distributed_options_from_env(),
                    Catch::Contains("RANK='4'") && Catch::Contains("0 to 3"));
  set("RANK", "0");
  set("MASTER_PORT", "http");
  CHECK_THROWS_WITH(imcap::distributed_options_from_env(), Catch::Contains("MASTER_PORT='http'"));
  set("WORLD_SIZE", nullptr);
  imcap::DistributedOptions bad;
  bad.rank = 2;
  bad.world_size = 2;
  CHECK_THROWS_AS(imcap::ProcessGroup(bad), imcap::InvalidArgument);
  // One process is a group too: every collective is the identity.
  imcap::DistributedOptions solo;
  solo.master_port = free_port();
  imcap::ProcessGroup group(solo);
  CHECK(std::string(group.backend()) == "gloo");
  auto t = torch::tensor({1.5, -2.0});
  std::vector<at::Tensor> ts{t.clone(), torch::ones({3, 2})};
  group.all_reduce_mean(ts, 8);
  CHECK(torch::equal(ts[0], t));
  CHECK(group.broadcast_bytes("hello") == "hello");
  group.barrier();
}

TEST_CASE("a killed rank makes the other exit with an error, a hung one after the timeout",
          "[distributed][cli]") {
  imcap::test::TempDir tmp;
  const auto f = tiny_data(tmp.file("data"));
  for (const int sig : {SIGKILL, SIGSTOP}) {
    INFO("signal " << sig);
    const std::string tag = std::to_string(sig);
    const int port = free_port();
    std::vector<std::unique_ptr<Child>> ranks;
    for (int r = 0; r < 2; ++r) {
      auto args = train_args(f, tmp.file("run" + tag));
      args.insert(args.begin(), IMCAP_CLI_PATH);
      for (const char* extra : {"--epochs", "100000", "--dist-timeout", "5", "--threads", "1"})
        args.push_back(extra);
      ranks.push_back(std::make_unique<Child>(args, rank_env(r, 2, port),
                                              tmp.file("out" + tag + std::to_string(r)),
                                              tmp.file("err" + tag + std::to_string(r))));
    }
    // Wait until training runs (rank 0 has logged steps), then stop rank 1.
    const auto log = tmp.file("run" + tag + "/log.jsonl");
    for (int i = 0; i < 3000 && logged_losses(log).size() < 2; ++i) {
      if (ranks[0]->wait_for(0.02)) break;
    }
    INFO(file_text(tmp.file("err" + tag + "0")));
    REQUIRE(logged_losses(log).size() >= 2);
    ranks[1]->signal(sig);
    const auto code = ranks[0]->wait_for(60);
    ranks[1]->signal(SIGKILL);
    REQUIRE(code);
    CHECK(*code == 1);
    const auto err = file_text(tmp.file("err" + tag + "0"));
    CHECK_THAT(err,
               Catch::Contains("imcap: error: distributed:") && Catch::Contains("rank 0 of 2"));
  }
}

TEST_CASE("imcap train --nproc 2 trains, resumes and writes one last.imcap", "[distributed][cli]") {
  imcap::test::TempDir tmp;
  const auto f = tiny_data(tmp.file("data"));
  auto args = train_args(f, tmp.file("full"));
  for (const char* extra : {"--epochs", "2", "--nproc", "2"}) args.push_back(extra);
  auto r = imcap::test::run_cli(args);
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("data-parallel on 2 processes (gloo), 5 captions per process"));
  CHECK_THAT(r.out, Catch::Contains("wrote " + tmp.file("full/last.imcap")));
  CHECK(imcap::detail::path_exists(tmp.file("full/last.imcap")));
  CHECK(imcap::detail::path_exists(tmp.file("full/best.imcap")));
  const auto full = logged_losses(tmp.file("full/log.jsonl"));
  REQUIRE(full.size() >= 4);

  // Stopped after two steps, then resumed: the same steps and losses as without the stop.
  args = train_args(f, tmp.file("split"));
  for (const char* extra : {"--epochs", "2", "--nproc", "2", "--max-steps", "2"})
    args.push_back(extra);
  r = imcap::test::run_cli(args);
  REQUIRE(r.exit_code == 0);
  args.resize(args.size() - 2);
  args.push_back("--resume");
  r = imcap::test::run_cli(args);
  REQUIRE(r.exit_code == 0);
  const auto split = logged_losses(tmp.file("split/log.jsonl"));
  REQUIRE(split.size() == full.size());
  for (std::size_t i = 0; i < full.size(); ++i) CHECK(split[i] == Approx(full[i]).epsilon(1e-12));

  // SCST from that model on two processes: the ranks' samples, rewards and mean reward (which
  // relative advantages divide by) are gathered into each step.
  r = imcap::test::run_cli({"train",
                            "--annotations",
                            f.train_annotations,
                            "--images",
                            f.train_images,
                            "--out",
                            tmp.file("scst"),
                            "--objective",
                            "scst",
                            "--init-from",
                            tmp.file("full/last.imcap"),
                            "--nproc",
                            "2",
                            "--max-steps",
                            "2",
                            "--samples",
                            "2",
                            "--max-length",
                            "8",
                            "--batch-size",
                            "10",
                            "--workers",
                            "0",
                            "--log-interval",
                            "1",
                            "--flip-probability",
                            "0"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  const auto scst_losses = logged_losses(tmp.file("scst/log.jsonl"));
  const auto rewards = logged(tmp.file("scst/log.jsonl"), "reward");
  CHECK(scst_losses.size() == 2);
  CHECK(rewards.size() == 2);
  for (const double l : scst_losses) CHECK(std::isfinite(l));
  for (const double w : rewards) CHECK(w >= 0.0);

  // A launcher's environment and --nproc do not go together; bad values are usage errors.
  CHECK(imcap::test::run_cli({"train", "--annotations", f.train_annotations, "--images",
                              f.train_images, "--out", tmp.file("x"), "--nproc", "-1"})
            .exit_code == 2);
  CHECK(imcap::test::run_cli({"train", "--annotations", f.train_annotations, "--images",
                              f.train_images, "--out", tmp.file("x"), "--dist-timeout", "0"})
            .exit_code == 2);
}
