// Progress line and log (trainer/progress.hpp).
#include "trainer/progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <iostream>

#include <fmt/format.h>

#include "detail/io.hpp"
#include "detail/memory.hpp"
#include "imcap/error.hpp"

namespace imcap::detail {
namespace {

// A run killed while writing the log can leave half a line; the resumed run's lines must not
// be glued to it.
void drop_partial_last_line(const std::string& path) {
  if (!is_regular_file(path)) return;
  const std::string text = read_file(path);
  if (text.empty() || text.back() == '\n') return;
  const auto keep = text.find_last_of('\n');
  const off_t size = keep == std::string::npos ? 0 : static_cast<off_t>(keep + 1);
  if (::truncate(path.c_str(), size) != 0)
    throw IoError(
        fmt::format("{}: cannot cut the partial last line: {}", path, errno_message(errno)));
}

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e7) return "--:--";
  const auto total = static_cast<long>(s + 0.5);
  return total >= 3600
             ? fmt::format("{}:{:02d}:{:02d}", total / 3600, (total / 60) % 60, total % 60)
             : fmt::format("{:02d}:{:02d}", total / 60, total % 60);
}

}  // namespace

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void TrainLog::open(const std::string& path, bool append) {
  path_ = path;
  if (append) drop_partial_last_line(path);
  out_.open(path, append ? std::ios::app : std::ios::trunc);
  if (!out_) throw IoError(fmt::format("{}: cannot open the log for writing", path));
}

void TrainLog::write(const nlohmann::json& line) {
  if (!out_.is_open()) return;
  out_ << line.dump() << '\n';
  out_.flush();
  if (!out_) throw IoError(fmt::format("{}: cannot write the log", path_));
}

ProgressLine::ProgressLine(bool enabled, const TrainerOptions& options, std::size_t steps_per_epoch,
                           std::size_t start_step, Clock::time_point t0)
    : enabled_(enabled),
      tty_(enabled && ::isatty(STDERR_FILENO) != 0),
      options_(options),
      per_epoch_(steps_per_epoch),
      total_steps_(steps_per_epoch * static_cast<std::size_t>(options.epochs)),
      start_step_(start_step),
      t0_(t0),
      window_start_(t0) {}

nlohmann::json ProgressLine::after_step(const TrainingProgress& at, const StepOutcome& step,
                                        double lr) {
  const double loss = step.loss;
  const bool scst = std::isfinite(step.reward);
  ema_loss_ = ++steps_seen_ == 1 ? loss : 0.95 * ema_loss_ + 0.05 * loss;
  if (scst) ema_reward_ = steps_seen_ == 1 ? step.reward : 0.95 * ema_reward_ + 0.05 * step.reward;
  window_captions_ += step.captions;
  const bool log_now = at.global_step % std::max<std::size_t>(1, options_.log_interval) == 0;
  if (!log_now && !tty_) return nullptr;
  const double elapsed = seconds_since(t0_);
  const double rate = window_captions_ / std::max(1e-9, seconds_since(window_start_));
  const double steps_done = static_cast<double>(at.global_step - start_step_);
  const double eta =
      elapsed / std::max(1.0, steps_done) * static_cast<double>(total_steps_ - at.global_step);
  // With a time budget that ends the run before its epochs, the budget is the progress.
  const double budget = options_.max_seconds;
  const bool by_time = budget > 0 && eta > budget - elapsed;
  const std::string where =
      by_time ? fmt::format("time {}/{} epoch {} step {}/{}", format_duration(elapsed),
                            format_duration(budget), at.epoch + 1, at.step_in_epoch, per_epoch_)
              : fmt::format("epoch {}/{} step {}/{}", at.epoch + 1, options_.epochs,
                            at.step_in_epoch, per_epoch_);
  // SCST's loss hovers about 0 whatever it learns: its reward is what to watch.
  const std::string what = scst ? fmt::format("reward {:.4f} {:.0f} samples/s", ema_reward_, rate)
                                : fmt::format("loss {:.4f} {:.0f} captions/s", ema_loss_, rate);
  const std::string line = by_time ? fmt::format("{} {} left {}", where, what,
                                                 format_duration(std::max(0.0, budget - elapsed)))
                                   : fmt::format("{} {} elapsed {} ETA {}", where, what,
                                                 format_duration(elapsed), format_duration(eta));
  if (tty_) std::cerr << '\r' << line << "\033[K" << std::flush;
  if (!log_now) return nullptr;
  if (!tty_ && enabled_) std::cerr << line << '\n';
  window_captions_ = 0.0;
  window_start_ = Clock::now();
  nlohmann::json entry{{"type", "step"},
                       {"epoch", at.epoch + 1},
                       {"step", at.global_step},
                       {"loss", loss},
                       {"lr", lr},
                       {"captions_per_s", rate},
                       {"elapsed_s", elapsed},
                       {"rss_mib", to_mib(current_rss_bytes())}};
  if (scst) {
    entry["reward"] = step.reward;
    entry["baseline"] = step.baseline;
    if (std::isfinite(step.xe_loss)) entry["xe_loss"] = step.xe_loss;
  }
  return entry;
}

void ProgressLine::interrupt() {
  if (tty_) std::cerr << "\r\033[K";
  window_captions_ = 0.0;
  window_start_ = Clock::now();
}

void ProgressLine::end_epoch() {
  if (tty_) std::cerr << '\n';
}

void ProgressLine::print(const std::string& line) {
  if (enabled_) std::cerr << line << '\n';
}

}  // namespace imcap::detail
