// Self-critical sequence training's loss (trainer/scst.hpp).
#include "trainer/scst.hpp"

#include <cmath>

#include <fmt/format.h>

#include "imcap/decoder.hpp"
#include "imcap/error.hpp"
#include "imcap/model.hpp"
#include "imcap/search.hpp"
#include "trainer/progress.hpp"

namespace imcap::detail {
namespace {

// Each row's image id, image-major (row b * n + j is sample j of image b).
std::vector<std::int64_t> repeat_ids(const std::vector<std::int64_t>& ids, int n) {
  std::vector<std::int64_t> out;
  out.reserve(ids.size() * static_cast<std::size_t>(n));
  for (const auto id : ids) out.insert(out.end(), static_cast<std::size_t>(n), id);
  return out;
}

// The greedy captions' rewards, one per image.
std::vector<double> greedy_rewards(CaptionModel& model, const torch::Tensor& features,
                                   const std::vector<std::int64_t>& image_ids,
                                   const ScstOptions& options, const ScstReward& reward,
                                   double& seconds) {
  std::vector<Hypothesis> greedy;
  {
    torch::NoGradGuard no_grad;
    model.train(false);
    SearchOptions search;
    search.beam_size = 1;
    search.max_length = options.max_length;
    greedy = greedy_search(*model.step_decoder(), features.detach(), search,
                           SpecialTokens::of(model.vocab()));
    model.train(true);
  }
  const auto started = Clock::now();
  std::vector<double> out;
  out.reserve(greedy.size());
  for (std::size_t b = 0; b < greedy.size(); ++b)
    out.push_back(reward.score_ids(image_ids[b], greedy[b].tokens.data(), greedy[b].tokens.size()));
  seconds += seconds_since(started);
  return out;
}

}  // namespace

void check_scst_options(const ScstOptions& o) {
  const auto refuse = [](const char* field, const std::string& expected, const std::string& got) {
    throw InvalidArgument(
        fmt::format("trainer: ScstOptions::{} must be {}, got {}", field, expected, got));
  };
  if (o.samples < 1 || o.samples > 1000)
    refuse("samples", "from 1 to 1000", std::to_string(o.samples));
  if (o.baseline == ScstBaseline::kMean && o.samples < 2)
    refuse("samples", "at least 2 with the mean baseline (the other samples' mean)",
           std::to_string(o.samples));
  if (o.baseline != ScstBaseline::kMean && o.baseline != ScstBaseline::kGreedy)
    refuse("baseline", "greedy or mean", std::to_string(static_cast<int>(o.baseline)));
  if (!(o.temperature > 0.0) || !std::isfinite(o.temperature))
    refuse("temperature", "a finite number > 0", fmt::format("{}", o.temperature));
  if (o.top_k < 0) refuse("top_k", ">= 0", std::to_string(o.top_k));
  if (o.max_length < 2 || o.max_length > 1000)
    refuse("max_length", "from 2 to 1000", std::to_string(o.max_length));
  for (const auto& [field, w] : {std::pair<const char*, double>{"cider_weight", o.cider_weight},
                                 {"bleu_weight", o.bleu_weight},
                                 {"xe_weight", o.xe_weight}})
    if (!std::isfinite(w) || w < 0) refuse(field, "a finite number >= 0", fmt::format("{}", w));
  if (o.cider_weight == 0 && o.bleu_weight == 0)
    refuse("cider_weight", "> 0 when bleu_weight is 0 (a reward of zero teaches nothing)", "0");
}

ScstLoss scst_loss(CaptionModel& model, const torch::Tensor& features,
                   const std::vector<std::int64_t>& image_ids, const ScstOptions& options,
                   const ScstReward& reward, at::Generator generator, bool rescore_samples) {
  const int n = options.samples;
  ScstLoss out;
  std::vector<double> greedy;
  if (options.baseline == ScstBaseline::kGreedy)
    greedy = greedy_rewards(model, features, image_ids, options, reward, out.reward_seconds);
  SampleOptions sample;
  sample.samples = n;
  sample.max_length = options.max_length;
  sample.temperature = options.temperature;
  sample.top_k = options.top_k;
  // Without dropout the samples' log-probabilities are those of teacher-forcing the decoder on
  // them: drawn without autograd, then scored by the training loss's engine (one sequence pass
  // and one fused projection), instead of backpropagating through every sampling step. With
  // dropout (between stacked LSTM layers, or the attention decoder's before fc) a second pass
  // would draw other masks, so the gradient goes through the sampling.
  const bool attention = model.decoder_kind() == DecoderKind::kAttention;
  const bool dropout = attention ? model.attention_decoder()->options().dropout > 0
                                 : model.decoder()->options().num_layers > 1 &&
                                       model.decoder()->options().dropout > 0;
  const bool rescore = rescore_samples && !dropout;
  SampledCaptions drawn;
  {
    torch::AutoGradMode grad(!rescore && torch::GradMode::is_enabled());
    drawn = sample_captions(*model.step_decoder(), features, sample,
                            SpecialTokens::of(model.vocab()), generator);
  }
  const auto started = Clock::now();
  const std::vector<double> r = reward.score(drawn.tokens, repeat_ids(image_ids, n));
  out.reward_seconds += seconds_since(started);
  // The advantage r - b of each sample.
  const std::size_t rows = r.size();
  std::vector<float> advantage(rows);
  double reward_sum = 0.0, baseline_sum = 0.0;
  for (std::size_t b = 0; b * static_cast<std::size_t>(n) < rows; ++b) {
    const std::size_t first = b * static_cast<std::size_t>(n);
    double image_sum = 0.0;
    for (int j = 0; j < n; ++j) image_sum += r[first + static_cast<std::size_t>(j)];
    for (int j = 0; j < n; ++j) {
      const std::size_t i = first + static_cast<std::size_t>(j);
      const double base =
          options.baseline == ScstBaseline::kGreedy ? greedy[b] : (image_sum - r[i]) / (n - 1);
      advantage[i] = static_cast<float>(r[i] - base);
      reward_sum += r[i];
      baseline_sum += base;
    }
  }
  out.samples = static_cast<std::int64_t>(rows);
  out.mean_reward = rows > 0 ? reward_sum / static_cast<double>(rows) : 0.0;
  out.mean_baseline = rows > 0 ? baseline_sum / static_cast<double>(rows) : 0.0;
  // A tensor of its own (autograd keeps it for the backward pass).
  const auto a = torch::tensor(advantage, torch::kFloat).to(drawn.log_probs.device());
  if (rescore) {
    torch::Tensor captions = drawn.drawn, lengths = drawn.drawn_lengths;
    if (attention) {
      // The attention decoder's step 0 consumes <start>: teacher forcing needs it in front.
      captions = torch::cat(
          {torch::full({captions.size(0), 1}, model.vocab().start_id(), captions.options()),
           captions},
          /*dim=*/1);
      lengths = lengths + 1;
    }
    out.loss = model.weighted_loss(features.repeat_interleave(n, /*dim=*/0), captions, lengths,
                                   a / static_cast<double>(std::max<std::size_t>(1, rows)));
  } else {
    out.loss = -(a * drawn.log_probs).mean();
  }
  out.tokens = drawn.tokens;
  out.advantages.assign(advantage.begin(), advantage.end());
  return out;
}

}  // namespace imcap::detail
