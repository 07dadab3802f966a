// imcap serve: a captioning HTTP service (docs/serve.md).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <thread>

#include <fmt/format.h>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "cli/serve_http.hpp"
#include "imcap/captioner.hpp"
#include "imcap/error.hpp"

namespace imcap::cli {

namespace {

struct ServeArgs {
  ServeConfig config;
  std::string device = "cpu";
  double max_wait_ms = 2.0;
  int threads = 0, blas_threads = -1;
  std::size_t max_queue = 256;
};

// SIGTERM and SIGINT write a byte here; a thread reads it and stops the server. (A handler may
// run on any thread, OpenBLAS's included, and may only do async-signal-safe things.)
int g_signal_pipe[2] = {-1, -1};

extern "C" void on_stop_signal(int sig) {
  const int saved = errno;
  const char byte = static_cast<char>(sig);
  [[maybe_unused]] const auto n = ::write(g_signal_pipe[1], &byte, 1);
  errno = saved;
}

void run_serve(ServeArgs a) {
  ServeConfig& c = a.config;
  if (c.defaults.num_return > c.defaults.beam_size)
    throw UsageError(fmt::format("--num-return {} is more than --beam {}", c.defaults.num_return,
                                 c.defaults.beam_size));
  if (c.defaults.beam_size > c.max_beam)
    throw UsageError(
        fmt::format("--beam {} is more than --max-beam {}", c.defaults.beam_size, c.max_beam));
  if (c.defaults.max_length > c.max_length)
    throw UsageError(fmt::format("--max-length {} is more than a request may ask for ({})",
                                 c.defaults.max_length, c.max_length));
  if (c.api_key.empty())
    if (const char* key = std::getenv("IMCAP_API_KEY"); key && *key) c.api_key = key;
  c.batching.max_wait =
      std::chrono::microseconds(static_cast<std::int64_t>(a.max_wait_ms * 1000.0 + 0.5));
  c.batching.max_queue = a.max_queue;
  set_threads(a.threads, a.blas_threads);
  auto captioner = std::make_shared<const Captioner>(
      Captioner::load(c.model_path, parse_device(a.device), c.defaults));

  // A client that closes its socket early must not kill the server with SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  if (::pipe2(g_signal_pipe, O_CLOEXEC) != 0) throw IoError("serve: cannot create a pipe");
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);

  CaptionServer server(captioner, c);
  const int port = server.bind();
  std::thread watcher([&server] {
    char byte = 0;
    while (::read(g_signal_pipe[0], &byte, 1) < 0 && errno == EINTR) {
    }
    if (byte != 0)
      std::cerr << "imcap serve: stopping (finishing the requests in flight)" << std::endl;
    server.stop();
  });
  std::cerr << fmt::format(
      "imcap serve: {} ({}, {} decoder) on {}, {}, batches of up to {} "
      "images\n",
      c.model_path, to_string(captioner->model().config().encoder.arch),
      to_string(captioner->model().decoder_kind()), a.device, describe_threads(),
      c.batching.max_batch);
  std::cout << fmt::format("imcap serve: listening on http://{}:{}", c.host, port) << std::endl;
  server.run();
  // run() may also return without a signal (the listening socket failed): wake the watcher.
  const char zero = 0;
  [[maybe_unused]] const auto n = ::write(g_signal_pipe[1], &zero, 1);
  watcher.join();
  ::signal(SIGTERM, SIG_DFL);
  ::signal(SIGINT, SIG_DFL);
  std::cerr << "imcap serve: stopped\n";
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  ServeConfig& c = a->config;
  auto* cmd = app.add_subcommand(
      "serve", "Serve captions over HTTP: POST /v1/caption, GET /health, /metrics and a web page");
  cmd->add_option("--model", c.model_path, "Model file (.imcap)")->required();
  cmd->add_option("--host", c.host, "Address to listen on (0.0.0.0: every interface)")
      ->capture_default_str();
  cmd->add_option("--port", c.port, "Port (0: any free port, printed at start)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--max-batch", c.batching.max_batch, "Most images per batched search")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--max-wait-ms", a->max_wait_ms,
                  "Longest a request waits for others to share its batch, milliseconds")
      ->capture_default_str()
      ->check(finite_range(0.0, 10000.0));
  cmd->add_option("--max-queue", a->max_queue,
                  "Most images waiting for a batch; beyond it requests get 503")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  add_thread_options(cmd, a->threads, a->blas_threads);
  cmd->add_option("--http-threads", c.http_threads, "Connections served at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--beam", c.defaults.beam_size, "Default beam size (1: greedy)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  cmd->add_option("--num-return", c.defaults.num_return, "Default captions per image")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  cmd->add_option("--max-length", c.defaults.max_length, "Default most tokens per caption")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--max-beam", c.max_beam, "The largest beam a request may ask for")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  cmd->add_option("--max-images", c.max_images, "Most images in one /v1/caption/batch request")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--max-body-bytes", c.max_body_bytes, "Largest request body, bytes")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1024}, std::size_t{1} << 32));
  cmd->add_option("--max-pixels", c.max_pixels, "Largest image, pixels (width x height)")
      ->capture_default_str()
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 32));
  cmd->add_option("--timeout-s", c.timeout_s,
                  "Seconds a client may take to send its request (and the socket timeouts)")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  cmd->add_option("--api-key", c.api_key,
                  "Require this key ('Authorization: Bearer KEY' or 'X-API-Key: KEY'); default "
                  "$IMCAP_API_KEY, none when unset");
  cmd->add_option("--allow-origin", c.allow_origins,
                  "A site (scheme://host[:port]) whose pages may call the API, or '*'; "
                  "repeatable. Default: none but the server's own page");
  add_decode_weights_option(cmd, c.defaults.decode_weights);
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->callback([a] { run_serve(*a); });
}

}  // namespace imcap::cli
