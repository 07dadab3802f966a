// One training step (trainer/step.hpp).
#include "trainer/step.hpp"

#include <algorithm>
#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "detail/fused_adam.hpp"
#include "detail/io.hpp"
#include "imcap/error.hpp"
#include "trainer/scst.hpp"
#include "trainer/validation.hpp"

namespace imcap::detail {
namespace {

// Spreads the ranks' per-step dropout seeds apart (rank 0 keeps the one-process seeds).
constexpr std::uint64_t kRankSeedStride = 0x9e3779b97f4a7c15ull;

}  // namespace

TrainStep::TrainStep(CaptionModel& model, const TrainerOptions& options, ProcessGroup* group,
                     bool images, const ScstReward* reward)
    : model_(model),
      options_(options),
      group_(group),
      reward_(reward),
      rank_(group != nullptr ? group->rank() : 0),
      world_(group != nullptr ? group->world_size() : 1) {
  // oneDNN trains the CNN's convolutions on the CPU about 1.4x faster in channels_last (NHWC)
  // than in NCHW at training batch sizes (docs/performance.md): the trainable convolution
  // weights are kept in that layout (their gradients and Adam's moments follow), and the images
  // are given in it. Saved files are row-major as always.
  if (model.device().is_cpu() && at::hasMKLDNN() && images) {
    torch::NoGradGuard no_grad;
    for (auto& m : model.encoder()->backbone->modules(/*include_self=*/false))
      if (auto* conv = m->as<torch::nn::Conv2d>();
          conv != nullptr && conv->weight.requires_grad()) {
        conv->weight.set_data(conv->weight.contiguous(at::MemoryFormat::ChannelsLast));
        channels_last_ = true;
      }
  }
  for (auto& p : model.encoder()->parameters())
    if (p.requires_grad()) params_.push_back(p);
  for (auto& p : model.decoder_module().parameters())
    if (p.requires_grad()) params_.push_back(p);
  if (options.optimizer == Optimizer::kAdam)
    optimizer_ = std::make_unique<FusedAdam>(
        params_, torch::optim::AdamOptions(options.lr).weight_decay(options.weight_decay));
  else
    optimizer_ =
        std::make_unique<torch::optim::SGD>(params_, torch::optim::SGDOptions(options.lr)
                                                         .momentum(options.momentum)
                                                         .weight_decay(options.weight_decay));
}

StepOutcome TrainStep::run(const Batch& batch, bool want_stop, bool want_anneal,
                           const TrainingProgress& at, const std::string& last_checkpoint) {
  const auto device = model_.device();
  model_.train(true);
  // A per-step seed makes dropout reproducible across a resume without storing RNG state;
  // each rank draws its own masks.
  const std::uint64_t step_seed = options_.seed * 1000003ull + at.global_step +
                                  static_cast<std::uint64_t>(rank_) * kRankSeedStride;
  torch::manual_seed(step_seed);
  const bool scst = options_.objective == Objective::kScst;
  // SCST's optional cross-entropy term on the batch's references (ScstOptions::xe_weight).
  const double xe_weight = scst ? options_.scst.xe_weight : 0.0;
  const bool xe = !scst || xe_weight > 0;
  const bool has_data = batch.size() > 0;
  torch::Tensor loss;
  StepOutcome out;
  // This rank's share of the batch's mean: its tokens (cross-entropy) or samples (SCST), and
  // with SCST's cross-entropy term its tokens and that term's loss.
  double rank_weight = 0.0, all_weight = 0.0, reward_sum = 0.0, baseline_sum = 0.0;
  double rank_tokens = 0.0, all_tokens = 0.0, xe_loss = 0.0;
  torch::Tensor xe_term;
  // An attention model's loss is a mean over the targets plus a penalty averaged over the
  // captions. The ranks' gradients are weighted by their share of the targets (below), so each
  // rank scales its penalty by its share of the captions over its share of the targets: the
  // averaged gradient is then the whole batch's. That needs the batch's totals first.
  double penalty_scale = 1.0;
  if (group_ != nullptr && xe && model_.decoder_kind() == DecoderKind::kAttention) {
    const double captions = static_cast<double>(batch.size());
    const double targets =
        has_data ? static_cast<double>(batch.lengths.sum().item<std::int64_t>()) - captions : 0.0;
    auto totals = torch::tensor({targets, captions}, torch::kFloat64);
    group_->all_reduce(totals);
    const auto t = totals.accessor<double, 1>();
    if (targets > 0 && t[1] > 0) penalty_scale = (captions / t[1]) / (targets / t[0]);
  }
  if (has_data) {
    auto images = batch.images.to(device, /*non_blocking=*/true);
    if (channels_last_ && images.dim() == 4)
      images = images.contiguous(at::MemoryFormat::ChannelsLast);
    const auto features = encode(model_, images);
    if (xe) {
      const auto captions = batch.captions.to(device, /*non_blocking=*/true);
      const auto lengths = batch.lengths.to(device, /*non_blocking=*/true);
      xe_term =
          model_.loss(features.index_select(0, batch.image_index.to(device, /*non_blocking=*/true)),
                      captions, lengths, penalty_scale);
      // The targets: a caption of length L has L (Show and Tell) or L - 1 (attention).
      rank_tokens = static_cast<double>(batch.lengths.sum().item<std::int64_t>());
      if (model_.decoder_kind() == DecoderKind::kAttention)
        rank_tokens -= static_cast<double>(batch.lengths.size(0));
    }
    if (scst) {
      // The batch's distinct images, each once; the samples come from a generator of the
      // step's seed on the CPU (the device's default generator, seeded above, on a GPU).
      at::Generator generator;
      if (device.is_cpu()) generator = at::make_generator<at::CPUGeneratorImpl>(step_seed);
      ScstLoss s = scst_loss(model_, features, batch.image_ids, options_.scst, *reward_, generator);
      loss = std::move(s.loss);
      rank_weight = static_cast<double>(s.samples);
      reward_sum = s.mean_reward * rank_weight;
      baseline_sum = s.mean_baseline * rank_weight;
      out.reward_seconds = s.reward_seconds;
      if (xe_weight > 0) xe_loss = xe_term.item<double>();
    } else {
      loss = xe_term;
      rank_weight = rank_tokens;
    }
    out.loss = loss.item<double>();
  }
  out.captions = scst ? rank_weight : static_cast<double>(batch.size());
  all_weight = rank_weight;
  if (group_ != nullptr) {
    // One small all-reduce: the batch's weighted loss and weight, its captions, whether any
    // rank must stop (time limit, signal), so that all stop at one step, SCST's sums, and
    // whether any rank's clock calls for the end-of-budget cut of the rate.
    auto stats = torch::tensor(
        {out.loss * rank_weight, rank_weight, out.captions, want_stop ? 1.0 : 0.0, reward_sum,
         baseline_sum, xe_loss * rank_tokens, rank_tokens, want_anneal ? 1.0 : 0.0},
        torch::kFloat64);
    group_->all_reduce(stats);
    const auto st = stats.accessor<double, 1>();
    all_weight = st[1];
    out.loss = all_weight > 0 ? st[0] / all_weight : 0.0;
    out.captions = st[2];
    out.stop = st[3] > 0;
    out.anneal = st[8] > 0;
    reward_sum = st[4];
    baseline_sum = st[5];
    all_tokens = st[7];
    xe_loss = all_tokens > 0 ? st[6] / all_tokens : 0.0;
  } else {
    all_tokens = rank_tokens;
  }
  if (scst && all_weight > 0) {
    out.reward = reward_sum / all_weight;
    out.baseline = baseline_sum / all_weight;
  }
  // ScstOptions::relative_advantage: SCST's loss is linear in the advantages, so dividing them
  // by the batch's mean reward (known only now, all ranks together) is scaling its term.
  if (scst && options_.scst.relative_advantage && all_weight > 0) {
    const double scale = 1.0 / std::max(out.reward, relative_advantage_floor(options_.scst));
    out.loss *= scale;
    if (has_data) loss = loss * scale;
  }
  if (scst && xe_weight > 0) {
    // The step's loss is SCST's plus the weighted cross-entropy; both are reported.
    out.xe_loss = xe_loss;
    out.loss += xe_weight * xe_loss;
  }
  if (!std::isfinite(out.loss))
    throw Error(fmt::format(
        "training diverged: the loss is {} at step {} (epoch {}); {}. Try a lower --lr.", out.loss,
        at.global_step + 1, at.epoch + 1,
        path_exists(last_checkpoint)
            ? fmt::format("the last checkpoint {} is kept", last_checkpoint)
            : std::string("no checkpoint was written")));
  optimizer_->zero_grad();
  if (group_ == nullptr) {
    if (scst && xe_weight > 0)
      (loss + xe_weight * xe_term).backward();
    else
      loss.backward();
  } else {
    // The loss is a mean over this rank's tokens (or samples). Weighted by the rank's share of
    // the batch's (times the world size), the ranks' averaged gradient is the gradient of the
    // whole batch's mean loss: the step one process would take on the whole batch. SCST's
    // cross-entropy term is a mean over the tokens, weighted by the rank's share of those.
    if (has_data) {
      auto weighted = loss * (rank_weight * world_ / all_weight);
      if (scst && xe_weight > 0 && all_tokens > 0)
        weighted = weighted + xe_term * (xe_weight * rank_tokens * world_ / all_tokens);
      weighted.backward();
    }
    std::vector<torch::Tensor> grads;
    grads.reserve(params_.size());
    for (auto& p : params_) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.grad());
    }
    group_->all_reduce_mean(grads, options_.bucket_bytes);
  }
  if (options_.clip_norm > 0) torch::nn::utils::clip_grad_norm_(params_, options_.clip_norm);
  optimizer_->step();
  return out;
}

}  // namespace imcap::detail
