#include "imcap/search.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include <fmt/format.h>
#include <torch/torch.h>

#include "detail/hypothesis.hpp"
#include "imcap/error.hpp"

namespace imcap {

void DecodeState::select_rows(const at::Tensor& rows) {
  if (tensors.size() != row_dims.size()) {
    throw InvalidArgument(
        fmt::format("DecodeState: {} tensors but {} row_dims", tensors.size(), row_dims.size()));
  }
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (row_dims[i] < 0 || row_dims[i] >= tensors[i].dim()) {
      throw InvalidArgument(fmt::format("DecodeState: tensors[{}] has {} dims, row_dims[{}] = {}",
                                        i, tensors[i].dim(), i, row_dims[i]));
    }
    tensors[i] = tensors[i].index_select(row_dims[i], rows);
  }
}

std::int64_t DecodeState::num_rows() const {
  if (tensors.size() != row_dims.size()) {
    throw InvalidArgument(
        fmt::format("DecodeState: {} tensors but {} row_dims", tensors.size(), row_dims.size()));
  }
  std::int64_t rows = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (row_dims[i] < 0 || row_dims[i] >= tensors[i].dim()) {
      throw InvalidArgument(fmt::format("DecodeState: tensors[{}] has {} dims, row_dims[{}] = {}",
                                        i, tensors[i].dim(), i, row_dims[i]));
    }
    const std::int64_t n = tensors[i].size(row_dims[i]);
    if (i > 0 && n != rows) {
      throw InvalidArgument(
          fmt::format("DecodeState: tensors[{}] has {} rows along dim {}, tensors[0] has {}", i, n,
                      row_dims[i], rows));
    }
    rows = n;
  }
  return rows;
}

namespace detail {

double length_penalty(std::int64_t length, double alpha) {
  if (alpha == 0.0) return 1.0;
  return std::pow(static_cast<double>(std::max<std::int64_t>(length, 1)), alpha);
}

bool starts_with_start(const std::vector<std::int64_t>& tokens, std::int64_t start_id) {
  return start_id >= 0 && !tokens.empty() && tokens.front() == start_id;
}

std::int64_t word_count(const std::vector<std::int64_t>& tokens, std::int64_t start_id) {
  return static_cast<std::int64_t>(tokens.size()) - (starts_with_start(tokens, start_id) ? 1 : 0);
}

Hypothesis make_hypothesis(const std::vector<std::int64_t>& tokens, double log_prob, bool finished,
                           const SearchOptions& options, const SpecialTokens& ids) {
  Hypothesis h;
  const auto skip = starts_with_start(tokens, ids.start) ? 1 : 0;
  h.tokens.assign(tokens.begin() + skip, tokens.end());
  h.log_prob = log_prob;
  h.finished = finished;
  const auto length = static_cast<std::int64_t>(h.tokens.size()) + (finished ? 1 : 0);
  h.score = log_prob / length_penalty(length, options.alpha);
  return h;
}

}  // namespace detail

namespace {

using detail::length_penalty;
using detail::make_hypothesis;
using detail::starts_with_start;
using detail::word_count;

// A hypothesis under construction; tokens include a leading <start> if one was generated.
struct Partial {
  std::vector<std::int64_t> tokens;
  double log_prob = 0.0;
};

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

void detail::check_search_options(const SearchOptions& options, const char* what) {
  if (options.beam_size < 1) {
    throw InvalidArgument(
        fmt::format("{}: SearchOptions::beam_size must be >= 1, got {}", what, options.beam_size));
  }
  if (options.max_length < 1) {
    throw InvalidArgument(fmt::format("{}: SearchOptions::max_length must be >= 1, got {}", what,
                                      options.max_length));
  }
  if (options.min_length < 0) {
    throw InvalidArgument(fmt::format("{}: SearchOptions::min_length must be >= 0, got {}", what,
                                      options.min_length));
  }
  if (!(options.alpha >= 0.0) || !std::isfinite(options.alpha)) {
    throw InvalidArgument(fmt::format(
        "{}: SearchOptions::alpha must be a finite number >= 0, got {}", what, options.alpha));
  }
  if (options.num_return < 1 || options.num_return > options.beam_size) {
    throw InvalidArgument(
        fmt::format("{}: SearchOptions::num_return must be in [1, beam_size = {}], got {}", what,
                    options.beam_size, options.num_return));
  }
}

namespace {

void check_features(const at::Tensor& features, const char* what) {
  if (!features.defined() || features.dim() < 1) {
    throw InvalidArgument(
        fmt::format("{}: features must be a tensor [B, ...] with the batch on dim 0", what));
  }
}

}  // namespace

void detail::check_special_tokens(const SpecialTokens& tokens, std::int64_t vocab_size,
                                  const char* what) {
  const std::pair<const char*, std::int64_t> ids[] = {
      {"end", tokens.end}, {"unk", tokens.unk}, {"start", tokens.start}};
  for (const auto& [name, id] : ids) {
    if (id < -1 || id >= vocab_size) {
      throw InvalidArgument(fmt::format(
          "{}: SpecialTokens::{} = {} is outside [0, {}) (the decoder's vocabulary) and not -1",
          what, name, id, vocab_size));
    }
  }
}

namespace {

using detail::check_search_options;
using detail::check_special_tokens;

// The decoder's scores for `rows` rows as float log-probabilities; checks the shape.
at::Tensor log_probs(const at::Tensor& scores, std::int64_t rows, std::int64_t vocab_size,
                     const char* what) {
  if (!scores.defined() || scores.dim() != 2 || scores.size(0) != rows ||
      (vocab_size >= 0 && scores.size(1) != vocab_size) || scores.size(1) < 1) {
    throw InvalidArgument(fmt::format(
        "{}: the decoder returned scores of shape {}, expected [{}, {}]", what,
        scores.defined() ? fmt::format("[{}]", fmt::join(scores.sizes(), ", ")) : "(undefined)",
        rows, vocab_size >= 0 ? std::to_string(vocab_size) : "V"));
  }
  return at::log_softmax(scores, /*dim=*/1, at::kFloat);
}

void check_state_rows(const DecodeState& state, std::int64_t rows, const char* what) {
  if (state.tensors.empty()) return;
  const std::int64_t n = state.num_rows();
  if (n != rows) {
    throw InvalidArgument(
        fmt::format("{}: the decoder's state has {} rows, expected {}", what, n, rows));
  }
}

// Masks <unk> everywhere, <start> after the first step and <end> in rows that have fewer
// than min_length words.
void apply_masks(at::Tensor& logp, int step, const std::vector<std::int64_t>& words,
                 const SearchOptions& options, const SpecialTokens& ids) {
  if (options.forbid_unk && ids.unk >= 0) logp.select(1, ids.unk).fill_(kNegInf);
  if (step > 0 && ids.start >= 0) logp.select(1, ids.start).fill_(kNegInf);
  if (ids.end >= 0 && options.min_length > 0) {
    std::vector<float> penalty(words.size(), 0.0f);
    bool any = false;
    for (std::size_t i = 0; i < words.size(); ++i) {
      if (words[i] < options.min_length) {
        penalty[i] = kNegInf;
        any = true;
      }
    }
    if (any) {
      auto pen = torch::from_blob(penalty.data(), {static_cast<std::int64_t>(penalty.size())},
                                  torch::kFloat)
                     .to(logp.device());
      logp.select(1, ids.end).add_(pen);
    }
  }
}

at::Tensor to_device_int64(const std::vector<std::int64_t>& values, const at::Device& device) {
  auto cpu = torch::from_blob(const_cast<std::int64_t*>(values.data()),
                              {static_cast<std::int64_t>(values.size())}, torch::kInt64);
  return device.is_cpu() ? cpu.clone() : cpu.to(device);
}

// The first step of every search: the decoder's start() on the images, validated, as
// log-probabilities.
struct FirstStep {
  at::Tensor log_probs;  // [B, V]
  DecodeState state;     // B rows
  std::int64_t vocab_size = -1;
};

FirstStep first_step(const StepDecoder& decoder, const at::Tensor& features, std::int64_t batch,
                     const SpecialTokens& ids, const char* what) {
  StepStart start = decoder.start(features);
  check_state_rows(start.state, batch, what);
  FirstStep first;
  first.vocab_size = start.scores.defined() && start.scores.dim() == 2 ? start.scores.size(1) : -1;
  first.log_probs = log_probs(start.scores, batch, first.vocab_size, what);
  check_special_tokens(ids, first.vocab_size, what);
  first.state = std::move(start.state);
  return first;
}

}  // namespace

std::vector<Hypothesis> greedy_search(const StepDecoder& decoder, const at::Tensor& features,
                                      const SearchOptions& options, const SpecialTokens& ids) {
  constexpr const char* kWhat = "greedy search";
  SearchOptions opts = options;
  opts.beam_size = 1;
  opts.num_return = 1;
  check_search_options(opts, kWhat);
  check_features(features, kWhat);
  const std::int64_t batch = features.size(0);
  std::vector<Hypothesis> results(static_cast<std::size_t>(batch));
  if (batch == 0) return results;

  torch::NoGradGuard no_grad;
  FirstStep first = first_step(decoder, features, batch, ids, kWhat);
  DecodeState state = std::move(first.state);
  const std::int64_t vocab_size = first.vocab_size;
  at::Tensor logp = std::move(first.log_probs);

  // rows[i] = the image that live row i decodes.
  std::vector<std::int64_t> rows(static_cast<std::size_t>(batch));
  for (std::int64_t i = 0; i < batch; ++i) rows[static_cast<std::size_t>(i)] = i;
  std::vector<Partial> partial(static_cast<std::size_t>(batch));
  std::vector<std::int64_t> words(static_cast<std::size_t>(batch), 0);

  for (int t = 0;; ++t) {
    apply_masks(logp, t, words, opts, ids);
    auto [best_logp, best_id] = logp.max(/*dim=*/1);
    const at::Tensor best_logp_cpu = best_logp.cpu();
    const at::Tensor best_id_cpu = best_id.cpu();
    const float* lp = best_logp_cpu.data_ptr<float>();
    const std::int64_t* id = best_id_cpu.data_ptr<std::int64_t>();

    const bool last = t + 1 >= opts.max_length;
    std::vector<std::int64_t> keep;  // live rows that go on
    keep.reserve(rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      Partial& p = partial[static_cast<std::size_t>(rows[i])];
      Hypothesis& out = results[static_cast<std::size_t>(rows[i])];
      if (!std::isfinite(lp[i])) {  // every token masked or impossible: stop here
        out = make_hypothesis(p.tokens, p.log_prob, /*finished=*/false, opts, ids);
        continue;
      }
      p.log_prob += lp[i];
      if (id[i] == ids.end) {
        out = make_hypothesis(p.tokens, p.log_prob, /*finished=*/true, opts, ids);
        continue;
      }
      p.tokens.push_back(id[i]);
      if (last) {
        out = make_hypothesis(p.tokens, p.log_prob, /*finished=*/false, opts, ids);
        continue;
      }
      keep.push_back(static_cast<std::int64_t>(i));
    }
    if (keep.empty()) break;

    at::Tensor tokens = best_id;
    if (keep.size() != rows.size()) {
      const at::Tensor index = to_device_int64(keep, best_id.device());
      state.select_rows(index);
      tokens = best_id.index_select(0, index);
      std::vector<std::int64_t> next_rows;
      next_rows.reserve(keep.size());
      for (auto k : keep) next_rows.push_back(rows[static_cast<std::size_t>(k)]);
      rows = std::move(next_rows);
    }
    words.resize(rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      words[i] = word_count(partial[static_cast<std::size_t>(rows[i])].tokens, ids.start);
    }
    const auto n = static_cast<std::int64_t>(rows.size());
    const at::Tensor scores = decoder.step(tokens, state);
    check_state_rows(state, n, kWhat);
    logp = log_probs(scores, n, vocab_size, kWhat);
  }
  return results;
}

at::Tensor greedy_ids(const StepDecoder& decoder, const at::Tensor& features, int max_length) {
  check_features(features, "greedy_ids");
  SearchOptions plain;  // no masks, no end: the notebook's sample()
  plain.beam_size = 1;
  plain.max_length = max_length;
  plain.forbid_unk = false;
  const std::vector<Hypothesis> best = greedy_search(decoder, features, plain, SpecialTokens{});
  at::Tensor ids =
      torch::zeros({static_cast<std::int64_t>(best.size()), max_length}, torch::kInt64);
  auto rows = ids.accessor<std::int64_t, 2>();
  for (std::size_t b = 0; b < best.size(); ++b) {
    for (std::size_t t = 0; t < best[b].tokens.size(); ++t)
      rows[static_cast<std::int64_t>(b)][static_cast<std::int64_t>(t)] = best[b].tokens[t];
  }
  return ids;
}

std::vector<std::vector<Hypothesis>> beam_search(const StepDecoder& decoder,
                                                 const at::Tensor& features,
                                                 const SearchOptions& options,
                                                 const SpecialTokens& ids) {
  constexpr const char* kWhat = "beam search";
  check_search_options(options, kWhat);
  check_features(features, kWhat);
  const std::int64_t batch = features.size(0);
  const std::int64_t beam = options.beam_size;
  const auto num_return = static_cast<std::size_t>(options.num_return);
  std::vector<std::vector<Hypothesis>> finished(static_cast<std::size_t>(batch));
  if (batch == 0) return finished;

  torch::NoGradGuard no_grad;
  FirstStep first = first_step(decoder, features, batch, ids, kWhat);
  DecodeState state = std::move(first.state);
  const std::int64_t vocab_size = first.vocab_size;
  at::Tensor logp = std::move(first.log_probs);
  const at::Device device = logp.device();
  // Upper bound of the length penalty any hypothesis can reach: scores are <= 0, so a live
  // hypothesis can at best keep its log-probability and grow to max_length tokens.
  const double max_penalty = length_penalty(options.max_length, options.alpha);

  // Live hypotheses: `active` images, `per_image` rows each (1 at the first step, then beam),
  // row a * per_image + k is beam k of image active[a].
  std::vector<std::int64_t> active(static_cast<std::size_t>(batch));
  for (std::int64_t i = 0; i < batch; ++i) active[static_cast<std::size_t>(i)] = i;
  std::int64_t per_image = 1;
  std::vector<Partial> live(static_cast<std::size_t>(batch));
  at::Tensor live_scores =
      torch::zeros({batch}, torch::TensorOptions(torch::kFloat).device(device));
  std::vector<std::vector<Partial>> cut(static_cast<std::size_t>(batch));  // live at max_length

  auto add_finished = [&](std::vector<Hypothesis>& list, Hypothesis h) {
    auto pos = std::upper_bound(list.begin(), list.end(), h.score,
                                [](double s, const Hypothesis& x) { return s > x.score; });
    if (static_cast<std::size_t>(pos - list.begin()) >= num_return) return;
    list.insert(pos, std::move(h));
    if (list.size() > num_return) list.pop_back();
  };

  for (int t = 0;; ++t) {
    const bool last = t + 1 >= options.max_length;
    std::vector<std::int64_t> words(live.size());
    for (std::size_t r = 0; r < live.size(); ++r) {
      words[r] = word_count(live[r].tokens, ids.start);
    }
    apply_masks(logp, t, words, options, ids);
    const auto num_active = static_cast<std::int64_t>(active.size());
    // Candidates: every live row extended by every token, ranked per image by log-probability
    // (all live hypotheses of an image have the same length, so this is also the score order).
    // At most `beam` of them end with <end>, so the top 2 * beam hold `beam` that go on.
    const at::Tensor candidates =
        (logp + live_scores.unsqueeze(1)).view({num_active, per_image * vocab_size});
    const std::int64_t take = std::min<std::int64_t>(2 * beam, per_image * vocab_size);
    auto [top_values, top_indices] = candidates.topk(take, /*dim=*/1);
    const at::Tensor values_cpu = top_values.cpu().contiguous();
    const at::Tensor indices_cpu = top_indices.cpu().contiguous();
    const float* values = values_cpu.data_ptr<float>();
    const std::int64_t* indices = indices_cpu.data_ptr<std::int64_t>();

    std::vector<std::int64_t> next_active;
    std::vector<Partial> next_live;
    std::vector<std::int64_t> origin_rows;  // for select_rows
    std::vector<std::int64_t> next_tokens;
    std::vector<float> next_scores;
    for (std::int64_t a = 0; a < num_active; ++a) {
      const auto image = static_cast<std::size_t>(active[static_cast<std::size_t>(a)]);
      std::vector<Hypothesis>& done = finished[image];
      std::vector<std::pair<std::int64_t, std::int64_t>> chosen;  // (row, token), best first
      std::vector<float> chosen_values;
      for (std::int64_t r = 0; r < take; ++r) {
        const float value = values[a * take + r];
        if (!std::isfinite(value)) break;  // sorted: the rest are impossible too
        const std::int64_t index = indices[a * take + r];
        const std::int64_t row = a * per_image + index / vocab_size;
        const std::int64_t token = index % vocab_size;
        if (token == ids.end) {
          // Like a beam slot: only an <end> ranked among the best `beam` candidates finishes.
          if (r < beam) {
            add_finished(done, make_hypothesis(live[static_cast<std::size_t>(row)].tokens, value,
                                               /*finished=*/true, options, ids));
          }
          continue;
        }
        if (static_cast<std::int64_t>(chosen.size()) < beam) {
          chosen.emplace_back(row, token);
          chosen_values.push_back(value);
        }
        if (static_cast<std::int64_t>(chosen.size()) == beam && r + 1 >= beam) break;
      }
      if (chosen.empty()) continue;  // nothing can go on: what finished is all there is

      if (last) {
        for (std::size_t k = 0; k < chosen.size(); ++k) {
          Partial p = live[static_cast<std::size_t>(chosen[k].first)];
          p.tokens.push_back(chosen[k].second);
          p.log_prob = chosen_values[k];
          cut[image].push_back(std::move(p));
        }
        continue;
      }
      // Stop this image when its num_return-th finished hypothesis beats anything the best
      // live one can still become.
      if (done.size() >= num_return &&
          done[num_return - 1].score >= chosen_values.front() / max_penalty) {
        continue;
      }
      next_active.push_back(static_cast<std::int64_t>(image));
      for (std::int64_t k = 0; k < beam; ++k) {
        // Beams without a possible candidate repeat the best one with score -inf, so every
        // image keeps `beam` rows; their candidates are -inf and are never chosen.
        const bool real = k < static_cast<std::int64_t>(chosen.size());
        const auto& [row, token] = chosen[real ? static_cast<std::size_t>(k) : 0];
        Partial p = live[static_cast<std::size_t>(row)];
        p.tokens.push_back(token);
        p.log_prob = real ? chosen_values[static_cast<std::size_t>(k)] : kNegInf;
        origin_rows.push_back(row);
        next_tokens.push_back(token);
        next_scores.push_back(real ? chosen_values[static_cast<std::size_t>(k)] : kNegInf);
        next_live.push_back(std::move(p));
      }
    }
    if (last || next_active.empty()) break;

    active = std::move(next_active);
    live = std::move(next_live);
    per_image = beam;
    const auto rows = static_cast<std::int64_t>(live.size());
    state.select_rows(to_device_int64(origin_rows, device));
    live_scores = torch::from_blob(next_scores.data(), {rows}, torch::kFloat).clone().to(device);
    const at::Tensor scores = decoder.step(to_device_int64(next_tokens, device), state);
    check_state_rows(state, rows, kWhat);
    logp = log_probs(scores, rows, vocab_size, kWhat);
  }

  // Finished hypotheses first; hypotheses cut at max_length fill the rest.
  for (std::size_t image = 0; image < finished.size(); ++image) {
    auto& list = finished[image];
    if (list.size() >= num_return) continue;
    std::vector<Hypothesis> rest;
    for (const Partial& p : cut[image]) {
      rest.push_back(make_hypothesis(p.tokens, p.log_prob, /*finished=*/false, options, ids));
    }
    // Same number of tokens, but a stripped <start> makes lengths differ by one.
    std::stable_sort(rest.begin(), rest.end(),
                     [](const Hypothesis& x, const Hypothesis& y) { return x.score > y.score; });
    for (auto& h : rest) {
      if (list.size() >= num_return) break;
      list.push_back(std::move(h));
    }
  }
  return finished;
}

std::vector<std::vector<Hypothesis>> search(const StepDecoder& decoder, const at::Tensor& features,
                                            const SearchOptions& options,
                                            const SpecialTokens& ids) {
  if (options.beam_size == 1) {
    check_search_options(options, "search");
    std::vector<Hypothesis> best = greedy_search(decoder, features, options, ids);
    std::vector<std::vector<Hypothesis>> results;
    results.reserve(best.size());
    for (auto& h : best) results.push_back({std::move(h)});
    return results;
  }
  return beam_search(decoder, features, options, ids);
}

SampledCaptions sample_captions(const StepDecoder& decoder, const at::Tensor& features,
                                const SampleOptions& options, const SpecialTokens& ids,
                                at::Generator generator) {
  constexpr const char* kWhat = "sample_captions";
  if (options.samples < 1)
    throw InvalidArgument(
        fmt::format("{}: SampleOptions::samples must be >= 1, got {}", kWhat, options.samples));
  if (options.max_length < 1)
    throw InvalidArgument(fmt::format("{}: SampleOptions::max_length must be >= 1, got {}", kWhat,
                                      options.max_length));
  if (!(options.temperature > 0.0) || !std::isfinite(options.temperature))
    throw InvalidArgument(
        fmt::format("{}: SampleOptions::temperature must be a finite number > 0, got {}", kWhat,
                    options.temperature));
  if (options.top_k < 0)
    throw InvalidArgument(
        fmt::format("{}: SampleOptions::top_k must be >= 0, got {}", kWhat, options.top_k));
  check_features(features, kWhat);
  const std::int64_t rows = features.size(0) * options.samples;
  SampledCaptions out;
  if (rows == 0) {
    out.tokens = torch::zeros({0, 0}, torch::kInt64);
    out.lengths = torch::zeros({0}, torch::kInt64);
    out.log_probs = torch::zeros({0}, features.options().dtype(torch::kFloat));
    return out;
  }
  // Each sample is a row of its own, image-major.
  StepStart first = decoder.start(features.repeat_interleave(options.samples, /*dim=*/0));
  DecodeState state = std::move(first.state);
  check_state_rows(state, rows, kWhat);
  at::Tensor scores = std::move(first.scores);
  const std::int64_t vocab_size = scores.defined() && scores.dim() == 2 ? scores.size(1) : -1;
  check_special_tokens(ids, vocab_size, kWhat);
  const at::Device device = scores.device();
  at::Tensor finished = torch::zeros({rows}, torch::TensorOptions(torch::kBool).device(device));
  at::Tensor total = torch::zeros({rows}, torch::TensorOptions(torch::kFloat).device(device));
  std::vector<at::Tensor> drawn;
  for (int t = 0; t < options.max_length; ++t) {
    if (t > 0) {
      scores = decoder.step(drawn.back(), state);
      check_state_rows(state, rows, kWhat);
    }
    const at::Tensor logp = log_probs(scores, rows, vocab_size, kWhat);  // temperature 1
    at::Tensor weights = logp.detach() / options.temperature;
    if (options.forbid_unk && ids.unk >= 0) weights.select(1, ids.unk).fill_(kNegInf);
    if (t > 0 && ids.start >= 0) weights.select(1, ids.start).fill_(kNegInf);
    if (options.top_k > 0 && options.top_k < vocab_size) {
      const at::Tensor kth = std::get<0>(weights.topk(options.top_k, /*dim=*/1)).narrow(1, -1, 1);
      weights.masked_fill_(weights < kth, kNegInf);
    }
    const at::Tensor next =
        at::multinomial(torch::softmax(weights, /*dim=*/1), 1, /*replacement=*/false, generator)
            .squeeze(1);
    const at::Tensor lp = logp.gather(1, next.unsqueeze(1)).squeeze(1);
    total = total + lp.masked_fill(finished, 0.0);  // rows that ended add nothing
    drawn.push_back(next);
    if (ids.end >= 0) {
      finished = finished | next.eq(ids.end);
      if (finished.all().item<bool>()) break;
    }
  }
  // Rows on the host: a leading <start> left out, cut after the first <end>, padded.
  out.drawn = torch::stack(drawn, /*dim=*/1);
  const at::Tensor all = out.drawn.cpu();
  const auto a = all.accessor<std::int64_t, 2>();
  std::vector<std::vector<std::int64_t>> kept(static_cast<std::size_t>(rows));
  std::vector<std::int64_t> steps(static_cast<std::size_t>(rows), all.size(1));
  std::size_t width = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    auto& row = kept[static_cast<std::size_t>(r)];
    for (std::int64_t t = 0; t < all.size(1); ++t) {
      if (t == 0 && ids.start >= 0 && a[r][0] == ids.start) continue;
      row.push_back(a[r][t]);
      if (a[r][t] == ids.end) {
        steps[static_cast<std::size_t>(r)] = t + 1;
        break;
      }
    }
    width = std::max(width, row.size());
  }
  out.drawn_lengths = torch::tensor(steps, torch::kInt64).to(device);
  out.tokens = torch::full({rows, static_cast<std::int64_t>(width)}, ids.end >= 0 ? ids.end : 0,
                           torch::kInt64);
  out.lengths = torch::zeros({rows}, torch::kInt64);
  auto tok = out.tokens.accessor<std::int64_t, 2>();
  auto len = out.lengths.accessor<std::int64_t, 1>();
  for (std::int64_t r = 0; r < rows; ++r) {
    const auto& row = kept[static_cast<std::size_t>(r)];
    len[r] = static_cast<std::int64_t>(row.size());
    for (std::size_t t = 0; t < row.size(); ++t) tok[r][static_cast<std::int64_t>(t)] = row[t];
  }
  out.log_probs = total;
  return out;
}

}  // namespace imcap
