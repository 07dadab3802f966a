// Stop requests (trainer/stop.hpp).
#include "trainer/stop.hpp"

#include <csignal>

namespace imcap::detail {
namespace {

// Bumped by the signal handler (a lock-free atomic is async-signal-safe).
std::atomic<unsigned> g_stop_signals{0};
static_assert(std::atomic<unsigned>::is_always_lock_free);

extern "C" void imcap_on_stop_signal(int sig) {
  g_stop_signals.fetch_add(1, std::memory_order_relaxed);
  std::signal(sig, SIG_DFL);
}

}  // namespace

void install_stop_signal_handlers() {
  std::signal(SIGINT, imcap_on_stop_signal);
  std::signal(SIGTERM, imcap_on_stop_signal);
}

StopRequest::StopRequest(const std::atomic<bool>& requested)
    : requested_(requested), signals_at_start_(g_stop_signals.load(std::memory_order_relaxed)) {}

bool StopRequest::operator()() const { return requested_.load() || by_signal(); }

bool StopRequest::by_signal() const {
  return g_stop_signals.load(std::memory_order_relaxed) != signals_at_start_;
}

}  // namespace imcap::detail
