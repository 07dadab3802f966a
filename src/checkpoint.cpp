#include "imcap/checkpoint.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <utility>

#include "imcap/error.hpp"

namespace imcap {
namespace {

using nlohmann::json;

constexpr const char* kOptimizerTensor = "optimizer";

// The training state of a checkpoint (its `training` metadata), read with every key checked:
// a hostile or damaged value is a FormatError naming the file and the key, never a raw JSON
// exception or a run that silently trains nothing.
class TrainingStateReader {
 public:
  TrainingStateReader(const std::string& text, std::string file) : file_(std::move(file)) {
    try {
      root_ = json::parse(text);
    } catch (const json::exception& e) {
      // Without nlohmann's "[json.exception.parse_error.101] " prefix.
      const std::string what = e.what();
      const auto end = what.rfind("] ", what.find(' '));
      throw FormatError(fmt::format("{}: training: not valid JSON: {}", file_,
                                    end == std::string::npos ? what : what.substr(end + 2)));
    }
    if (!root_.is_object())
      throw FormatError(
          fmt::format("{}: training: expected a JSON object, got {}", file_, shown(root_)));
  }

  // Present and not null.
  bool has(const std::string& key) const {
    const auto it = root_.find(key);
    return it != root_.end() && !it->is_null();
  }
  TrainingStateReader child(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_object()) fail(key, "an object", v);
    return TrainingStateReader(v, file_, path_ + key + ".");
  }
  std::string text(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_string()) fail(key, "a string", v);
    return v.get<std::string>();
  }
  // An integer from `min` to `max`; `expected`, when given, says what is allowed in the
  // message.
  std::uint64_t count(const std::string& key, std::uint64_t min, std::uint64_t max,
                      const std::string& expected = {}) const {
    const json& v = at(key);
    const bool in_range =
        v.is_number_unsigned() && v.get<std::uint64_t>() >= min && v.get<std::uint64_t>() <= max;
    if (!in_range)
      fail(key,
           !expected.empty() ? expected
           : min == max      ? fmt::format("{}", min)
                             : fmt::format("an integer from {} to {}", min, max),
           v);
    return v.get<std::uint64_t>();
  }
  // A finite number, at least `min` (or above it when `strict`).
  double number(const std::string& key, double min, bool strict) const {
    const json& v = at(key);
    const bool ok = v.is_number() && std::isfinite(v.get<double>()) &&
                    (strict ? v.get<double>() > min : v.get<double>() >= min);
    if (!ok) fail(key, fmt::format("a finite number {} {}", strict ? ">" : ">=", min), v);
    return v.get<double>();
  }
  [[noreturn]] void fail(const std::string& key, const std::string& expected,
                         const json& got) const {
    throw FormatError(fmt::format("{}: training.{}{}: expected {}, got {}", file_, path_, key,
                                  expected, shown(got)));
  }

 private:
  TrainingStateReader(const json& root, std::string file, std::string path)
      : file_(std::move(file)), path_(std::move(path)), root_(root) {}

  const json& at(const std::string& key) const {
    const auto it = root_.find(key);
    if (it == root_.end())
      throw FormatError(fmt::format("{}: training: missing key '{}{}'", file_, path_, key));
    return *it;
  }
  static std::string shown(const json& v) {
    constexpr std::size_t kMaxShown = 40;
    std::string text = v.dump();
    if (text.size() > kMaxShown) text = text.substr(0, kMaxShown) + "...";
    return text;
  }

  std::string file_;
  std::string path_;  // "best." inside the best validation's object
  json root_;
};

Validation validation_from_json(const TrainingStateReader& j) {
  Validation v;
  v.loss = j.number("loss", 0.0, /*strict=*/false);
  v.perplexity = j.number("perplexity", 0.0, /*strict=*/false);
  v.bleu4 = j.number("bleu4", 0.0, /*strict=*/false);
  v.cider = j.number("cider", 0.0, /*strict=*/false);
  v.images = j.count("images", 0, std::numeric_limits<std::size_t>::max());
  return v;
}

json validation_json(const Validation& v) {
  return {{"loss", v.loss},
          {"perplexity", v.perplexity},
          {"bleu4", v.bleu4},
          {"cider", v.cider},
          {"images", v.images}};
}

}  // namespace

std::string training_progress_to_json(const TrainingProgress& p) {
  json j{{"epoch", p.epoch},
         {"step_in_epoch", p.step_in_epoch},
         {"global_step", p.global_step},
         {"lr", p.lr},
         {"optimizer", p.optimizer},
         {"seed", p.seed},
         {"batch_size", p.batch_size},
         {"batching", p.batching},
         {"objective", p.objective},
         {"best_val_loss", std::isfinite(p.best_val_loss) ? json(p.best_val_loss) : json(nullptr)},
         {"bad_epochs", p.bad_epochs}};
  if (p.best) j["best"] = validation_json(*p.best);
  return j.dump();
}

TrainingProgress training_progress_from_json(const std::string& text, const std::string& file) {
  const TrainingStateReader j(text, file);
  constexpr auto kMax = std::numeric_limits<std::uint64_t>::max();
  TrainingProgress p;
  p.optimizer = j.text("optimizer");
  p.batch_size = j.count("batch_size", 1, kMax, "a positive integer");
  p.seed = j.count("seed", 0, kMax, "a non-negative integer");
  p.batching = j.text("batching");
  if (j.has("objective")) p.objective = j.text("objective");
  p.epoch = j.count("epoch", 0, static_cast<std::uint64_t>(std::numeric_limits<int>::max()));
  p.step_in_epoch = j.count("step_in_epoch", 0, kMax, "a non-negative integer");
  p.global_step = j.count("global_step", 0, kMax, "a non-negative integer");
  p.lr = j.number("lr", 0.0, /*strict=*/true);
  p.bad_epochs = j.has("bad_epochs") ? j.count("bad_epochs", 0, kMax, "a non-negative integer") : 0;
  p.best_val_loss =
      j.has("best_val_loss") ? j.number("best_val_loss", 0.0, /*strict=*/false) : INFINITY;
  if (j.has("best")) p.best = validation_from_json(j.child("best"));
  return p;
}

TrainingState to_training_state(const Checkpoint& checkpoint) {
  TrainingState s;
  s.json = training_progress_to_json(checkpoint.progress);
  const std::string& b = checkpoint.optimizer_state;
  s.tensors.insert(kOptimizerTensor,
                   torch::from_blob(const_cast<char*>(b.data()),
                                    {static_cast<std::int64_t>(b.size())}, torch::kUInt8)
                       .clone());
  return s;
}

Checkpoint checkpoint_from_training_state(const TrainingState& state, const std::string& file) {
  if (state.json.empty() || !state.tensors.contains(kOptimizerTensor))
    throw FormatError(fmt::format("{}: holds no training state to resume from", file));
  const auto bytes = state.tensors.at(kOptimizerTensor).contiguous();
  if (bytes.scalar_type() != torch::kUInt8 || bytes.dim() != 1)
    throw FormatError(
        fmt::format("{}: tensor 'training.optimizer': expected the optimizer's bytes (uint8, "
                    "one dimension), got {} of shape [{}]",
                    file, c10::toString(bytes.scalar_type()), fmt::join(bytes.sizes(), ", ")));
  Checkpoint c;
  c.progress = training_progress_from_json(state.json, file);
  c.optimizer_state.assign(reinterpret_cast<const char*>(bytes.data_ptr<std::uint8_t>()),
                           static_cast<std::size_t>(bytes.numel()));
  return c;
}

void save_checkpoint(const std::string& path, const CaptionModel& model,
                     const Checkpoint& checkpoint) {
  const TrainingState state = to_training_state(checkpoint);
  model.save(path, &state);
}

CaptionModel load_checkpoint(const std::string& path, const torch::Device& device,
                             Checkpoint& checkpoint) {
  TrainingState state;
  CaptionModel model = CaptionModel::load(path, device, &state);
  checkpoint = checkpoint_from_training_state(state, path);
  return model;
}

}  // namespace imcap
