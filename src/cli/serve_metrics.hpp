// imcap serve's counters, rendered in Prometheus's text format (version 0.0.4) for GET /metrics.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "imcap/batching_captioner.hpp"

namespace imcap::cli {

/// Thread-safe request counters and histograms of one server.
class ServeMetrics {
 public:
  ServeMetrics();
  /// A response was sent: `route` is one of the server's paths or "other" (never the client's
  /// path itself, which would give every probe its own series).
  void count_response(const std::string& route, int status);
  /// A caption request finished after `seconds` (any status).
  void observe_latency(const std::string& route, double seconds);
  /// `images` images were captioned now.
  void count_images(std::uint64_t images);
  void set_in_flight(int delta);

  /// The whole exposition: the server's counters and the batcher's statistics.
  std::string render(const BatchingStats& batching, int max_batch,
                     std::uint64_t connections_cut) const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Histogram {
    std::vector<std::uint64_t> buckets;  // cumulative counts are computed when rendering
    std::uint64_t count = 0;
    double sum = 0.0;
  };
  mutable std::mutex mutex_;
  Clock::time_point started_;
  std::map<std::pair<std::string, int>, std::uint64_t> responses_;
  std::map<std::string, Histogram> latency_;
  std::deque<std::pair<Clock::time_point, std::uint64_t>> recent_images_;  // last 10 s
  std::uint64_t images_ = 0;
  int in_flight_ = 0;
};

}  // namespace imcap::cli
