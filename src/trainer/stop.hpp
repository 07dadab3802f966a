// Stop requests of a training run (internal): Trainer::request_stop() and SIGINT/SIGTERM.
#pragma once

#include <atomic>

namespace imcap::detail {

/// Installs SIGINT and SIGTERM handlers: the first such signal asks every running fit() to
/// stop cleanly; the handler then steps aside, so that a second one ends the process at once.
void install_stop_signal_handlers();

/// Whether a run should stop: its own request (Trainer::request_stop) or a stop signal received
/// since the run began. Signals are the only process-wide state: a counter the handler bumps,
/// never reset, so runs one after another or side by side do not reset each other's.
class StopRequest {
 public:
  /// Starts watching: signals received before this call do not count.
  explicit StopRequest(const std::atomic<bool>& requested);
  bool operator()() const;
  /// Whether a signal (rather than request_stop) asked for the stop.
  bool by_signal() const;

 private:
  const std::atomic<bool>& requested_;
  unsigned signals_at_start_;
};

}  // namespace imcap::detail
