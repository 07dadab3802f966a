// Validation (trainer/validation.hpp).
#include "trainer/validation.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "imcap/captioner.hpp"
#include "imcap/data_loader.hpp"
#include "imcap/metrics.hpp"
#include "imcap/search.hpp"

namespace imcap::detail {
namespace {

using Ids = std::map<std::int64_t, std::vector<std::int64_t>>;  // image id -> caption ids

// Every rank's captions reach every rank: each in turn broadcasts its own.
void exchange_captions(ProcessGroup& group, Ids& found) {
  for (int root = 0; root < group.world_size(); ++root) {
    const bool mine = root == group.rank();
    const std::string bytes = group.broadcast_bytes(mine ? nlohmann::json(found).dump() : "", root);
    if (mine) continue;
    for (const auto& [id, ids] : nlohmann::json::parse(bytes).get<Ids>()) found[id] = ids;
  }
}

}  // namespace

torch::Tensor encode(CaptionModel& model, const torch::Tensor& images) {
  // Images are (B, 3, H, W); cached features pooled (B, C) or grids (B, P, C).
  if (images.dim() == 2 || images.dim() == 3) return model.encode_cached(images);
  return model.encode(images);
}

Validation validate(CaptionModel& model, const CocoDataset& val, const TrainerOptions& options,
                    ProcessGroup* group) {
  torch::NoGradGuard no_grad;
  model.train(false);
  const int rank = group != nullptr ? group->rank() : 0;
  const int world = group != nullptr ? group->world_size() : 1;
  const auto device = model.device();
  const auto& ids = val.image_ids();
  const std::size_t n =
      options.val_max_images == 0 ? ids.size() : std::min(ids.size(), options.val_max_images);
  const std::shared_ptr<StepDecoder> stepper =
      model.step_decoder(options.val_search.decode_weights);
  const SpecialTokens special = SpecialTokens::of(model.vocab());
  double loss_sum = 0.0, tokens = 0.0;
  std::map<std::int64_t, std::vector<std::string>> refs;
  Ids found;
  std::mt19937_64 rng(options.seed);
  constexpr std::size_t kChunk = 32;
  const auto pad = model.vocab().pad_id().value_or(model.vocab().end_id());
  for (std::size_t start = 0; start < n; start += kChunk) {
    const std::size_t end = std::min(n, start + kChunk);
    for (std::size_t i = start; i < end; ++i) refs[ids[i]] = val.references(ids[i]);
    if ((start / kChunk) % static_cast<std::size_t>(world) != static_cast<std::size_t>(rank))
      continue;
    std::vector<torch::Tensor> images;
    std::vector<const std::vector<std::int64_t>*> seqs;
    std::vector<std::int64_t> rows;
    for (std::size_t i = start; i < end; ++i) {
      images.push_back(val.image(ids[i], rng));
      for (const auto ci : val.captions_of_image(ids[i])) {
        seqs.push_back(&val.caption_ids(ci));
        rows.push_back(static_cast<std::int64_t>(i - start));
      }
    }
    const auto features = encode(model, torch::stack(images).to(device));
    Batch b;
    pad_captions(seqs, pad, b);
    const auto captions = b.captions.to(device);
    const auto lengths = b.lengths.to(device);
    const TeacherForced forced = model.teacher_forced(
        features.index_select(0, torch::tensor(rows, torch::kInt64).to(device)), captions, lengths);
    const double count = static_cast<double>(forced.lengths.sum().item<std::int64_t>());
    loss_sum += caption_loss(forced.logits, forced.targets, forced.lengths).item<double>() * count;
    tokens += count;
    const auto results = search(*stepper, features, options.val_search, special);
    for (std::size_t i = start; i < end; ++i) {
      const auto& hyps = results[i - start];
      found[ids[i]] = hyps.empty() ? std::vector<std::int64_t>{} : hyps.front().tokens;
    }
  }
  if (group != nullptr) {
    auto sums = torch::tensor({loss_sum, tokens}, torch::kFloat64);
    group->all_reduce(sums);
    loss_sum = sums[0].item<double>();
    tokens = sums[1].item<double>();
    exchange_captions(*group, found);
  }
  std::map<std::int64_t, std::string> candidates;
  for (const auto& [id, caption] : found) candidates[id] = model.vocab().decode(caption);
  Validation v;
  v.images = n;
  v.loss = tokens > 0 ? loss_sum / tokens : 0.0;
  v.perplexity = std::exp(v.loss);
  if (!candidates.empty()) {
    const auto scores = evaluate_captions(refs, candidates);
    v.bleu4 = scores.corpus.bleu[3];
    v.cider = scores.corpus.cider;
  }
  return v;
}

}  // namespace imcap::detail
