// imcap serve's HTTP front: routes, limits, authentication and JSON over cpp-httplib, in front of
// a BatchingCaptioner (docs/serve.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "imcap/batching_captioner.hpp"
#include "imcap/captioner.hpp"

namespace imcap::cli {

/// Everything `imcap serve` is told.
struct ServeConfig {
  std::string model_path;
  std::string host = "127.0.0.1";
  int port = 8080;  ///< 0: any free port (bind() returns it)
  BatchingOptions batching;
  /// beam_size, num_return and max_length: a request's defaults.
  CaptionOptions defaults;
  std::size_t max_body_bytes = 16u << 20;
  std::uint64_t max_pixels = 40'000'000;
  /// Seconds: the most a client may take to send its request, and the socket timeouts.
  int timeout_s = 10;
  /// Connections served at once (cpp-httplib's thread pool).
  int http_threads = 32;
  /// Most images in one POST /v1/caption/batch.
  int max_images = 16;
  /// The most a request may ask for.
  int max_beam = 10;
  int max_length = 100;
  /// Empty: no key needed.
  std::string api_key;
  /// Origins (scheme://host[:port]) whose pages may call the API; "*" for any. Empty: none
  /// besides the server's own.
  std::vector<std::string> allow_origins;
};

/// The server. bind() then run() on one thread; stop() from any other.
class CaptionServer {
 public:
  CaptionServer(std::shared_ptr<const Captioner> captioner, ServeConfig config);
  ~CaptionServer();
  CaptionServer(const CaptionServer&) = delete;
  CaptionServer& operator=(const CaptionServer&) = delete;

  /// Binds host:port; returns the port. Throws IoError when the address cannot be bound.
  int bind();
  /// Serves until stop(): then stops accepting, finishes the requests in flight and the queued
  /// captions, and returns.
  void run();
  /// Asks run() to return (thread-safe, not async-signal-safe).
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The web page served at GET / (HTML with its script and style inline).
const std::string& serve_web_page();

}  // namespace imcap::cli
