#include "cli/serve_metrics.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace imcap::cli {

namespace {

// Request latency buckets, seconds (upper bounds; +Inf is implied).
const std::vector<double> kLatencyBounds{0.005, 0.01, 0.025, 0.05, 0.1,  0.25,
                                         0.5,   1.0,  2.5,   5.0,  10.0, 30.0};
constexpr auto kRateWindow = std::chrono::seconds(10);

std::string number(double v) { return fmt::format("{:.9g}", v); }

}  // namespace

ServeMetrics::ServeMetrics() : started_(Clock::now()) {}

void ServeMetrics::count_response(const std::string& route, int status) {
  const std::lock_guard<std::mutex> lock(mutex_);
  ++responses_[{route, status}];
}

void ServeMetrics::observe_latency(const std::string& route, double seconds) {
  const std::lock_guard<std::mutex> lock(mutex_);
  Histogram& h = latency_[route];
  if (h.buckets.empty()) h.buckets.assign(kLatencyBounds.size(), 0);
  for (std::size_t i = 0; i < kLatencyBounds.size(); ++i)
    if (seconds <= kLatencyBounds[i]) {
      ++h.buckets[i];
      break;
    }
  ++h.count;
  h.sum += seconds;
}

void ServeMetrics::count_images(std::uint64_t images) {
  const std::lock_guard<std::mutex> lock(mutex_);
  images_ += images;
  const auto now = Clock::now();
  recent_images_.emplace_back(now, images);
  while (!recent_images_.empty() && now - recent_images_.front().first > kRateWindow)
    recent_images_.pop_front();
}

void ServeMetrics::set_in_flight(int delta) {
  const std::lock_guard<std::mutex> lock(mutex_);
  in_flight_ += delta;
}

std::string ServeMetrics::render(const BatchingStats& batching, int max_batch,
                                 std::uint64_t connections_cut) const {
  const std::lock_guard<std::mutex> lock(mutex_);
  const auto now = Clock::now();
  std::string out;
  out += "# HELP imcap_requests_total HTTP responses sent, by route and status code.\n";
  out += "# TYPE imcap_requests_total counter\n";
  for (const auto& [key, n] : responses_)
    out += fmt::format("imcap_requests_total{{route=\"{}\",code=\"{}\"}} {}\n", key.first,
                       key.second, n);

  out += "# HELP imcap_request_duration_seconds Time from a caption request's body to its reply.\n";
  out += "# TYPE imcap_request_duration_seconds histogram\n";
  for (const auto& [route, h] : latency_) {
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < kLatencyBounds.size(); ++i) {
      cumulative += h.buckets[i];
      out += fmt::format("imcap_request_duration_seconds_bucket{{route=\"{}\",le=\"{}\"}} {}\n",
                         route, number(kLatencyBounds[i]), cumulative);
    }
    out += fmt::format("imcap_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {}\n",
                       route, h.count);
    out += fmt::format("imcap_request_duration_seconds_sum{{route=\"{}\"}} {}\n", route,
                       number(h.sum));
    out += fmt::format("imcap_request_duration_seconds_count{{route=\"{}\"}} {}\n", route, h.count);
  }

  // Batch sizes: buckets at the powers of two up to max_batch, and max_batch itself.
  std::vector<std::uint64_t> bounds;
  for (std::uint64_t b = 1; b < static_cast<std::uint64_t>(max_batch); b *= 2) bounds.push_back(b);
  bounds.push_back(static_cast<std::uint64_t>(max_batch));
  out += "# HELP imcap_batch_size Images per batched search.\n";
  out += "# TYPE imcap_batch_size histogram\n";
  std::uint64_t sum = 0;
  for (std::size_t n = 1; n < batching.batch_sizes.size(); ++n) sum += n * batching.batch_sizes[n];
  for (const std::uint64_t bound : bounds) {
    std::uint64_t cumulative = 0;
    for (std::size_t n = 1; n < batching.batch_sizes.size() && n <= bound; ++n)
      cumulative += batching.batch_sizes[n];
    out += fmt::format("imcap_batch_size_bucket{{le=\"{}\"}} {}\n", bound, cumulative);
  }
  out += fmt::format("imcap_batch_size_bucket{{le=\"+Inf\"}} {}\n", batching.batches);
  out += fmt::format("imcap_batch_size_sum {}\nimcap_batch_size_count {}\n", sum, batching.batches);

  out += "# HELP imcap_queue_depth Images waiting for a batch.\n# TYPE imcap_queue_depth gauge\n";
  out += fmt::format("imcap_queue_depth {}\n", batching.queued_images);
  out += "# HELP imcap_requests_in_flight Caption requests being served.\n";
  out += "# TYPE imcap_requests_in_flight gauge\n";
  out += fmt::format("imcap_requests_in_flight {}\n", in_flight_);
  out += "# HELP imcap_images_total Images captioned.\n# TYPE imcap_images_total counter\n";
  out += fmt::format("imcap_images_total {}\n", images_);
  std::uint64_t recent = 0;
  for (const auto& [t, n] : recent_images_)
    if (now - t <= kRateWindow) recent += n;
  const double window =
      std::min(std::chrono::duration<double>(kRateWindow).count(),
               std::max(1e-3, std::chrono::duration<double>(now - started_).count()));
  out += "# HELP imcap_images_per_second Images captioned per second over the last 10 s.\n";
  out += "# TYPE imcap_images_per_second gauge\n";
  out += fmt::format("imcap_images_per_second {}\n", number(static_cast<double>(recent) / window));
  out += "# HELP imcap_batches_total Batched searches run.\n# TYPE imcap_batches_total counter\n";
  out += fmt::format("imcap_batches_total {}\n", batching.batches);
  out +=
      "# HELP imcap_connections_cut_total Connections closed for sending their request too "
      "slowly.\n# TYPE imcap_connections_cut_total counter\n";
  out += fmt::format("imcap_connections_cut_total {}\n", connections_cut);
  out += "# HELP imcap_uptime_seconds Seconds since the server started.\n";
  out += "# TYPE imcap_uptime_seconds gauge\n";
  out += fmt::format("imcap_uptime_seconds {}\n",
                     number(std::chrono::duration<double>(now - started_).count()));
  return out;
}

}  // namespace imcap::cli
