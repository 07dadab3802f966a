// What a training run reports while it runs (internal): the progress line on stderr and the
// JSONL log (OUT/log.jsonl, docs/training.md#the-log).
#pragma once

#include <chrono>
#include <cstddef>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "imcap/checkpoint.hpp"
#include "imcap/trainer.hpp"
#include "trainer/step.hpp"

namespace imcap::detail {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t);

/// OUT/log.jsonl: one JSON object a line, flushed at once.
class TrainLog {
 public:
  /// Opens `path` (rank 0 only; other ranks keep it closed and write nothing). `append`
  /// continues a resumed run's log, first cutting a half-written last line.
  void open(const std::string& path, bool append);
  /// Writes a line when open. Throws IoError when it cannot.
  void write(const nlohmann::json& line);

 private:
  std::string path_;
  std::ofstream out_;
};

/// The progress line ("epoch 1/3 step 40/125 loss 2.8123 310 captions/s elapsed 00:41 ETA
/// 03:02", or the time budget instead of the epochs when max_seconds ends the run first): a
/// line rewritten in place on a terminal, else one line per log interval.
class ProgressLine {
 public:
  /// `enabled`: this process reports (rank 0 with TrainerOptions::progress). `start_step`: the
  /// global step the run (or its resume) starts from.
  ProgressLine(bool enabled, const TrainerOptions& options, std::size_t steps_per_epoch,
               std::size_t start_step, Clock::time_point t0);

  /// After a step: its loss and captions (and SCST's reward). Returns the step's log line when
  /// one is due (every log_interval steps), else null; on a terminal it also redraws the line.
  nlohmann::json after_step(const TrainingProgress& at, const StepOutcome& step, double lr);
  /// Before other output (a validation line): clears the terminal's line; and the captions/s
  /// count restarts after it, so that they are those of training.
  void interrupt();
  /// After each epoch: ends the terminal's line.
  void end_epoch();
  /// A line of its own on stderr, when enabled.
  void print(const std::string& line);
  bool enabled() const { return enabled_; }

 private:
  bool enabled_, tty_;
  const TrainerOptions& options_;
  std::size_t per_epoch_, total_steps_, start_step_;
  Clock::time_point t0_, window_start_;
  double window_captions_ = 0.0, ema_loss_ = 0.0, ema_reward_ = 0.0;
  std::size_t steps_seen_ = 0;
};

}  // namespace imcap::detail
