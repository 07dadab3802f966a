#include "cli/bench_attention.hpp"

#include <iostream>
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "detail/fused_adam.hpp"
#include "imcap/attention_decoder.hpp"
#include "imcap/search.hpp"

namespace imcap::cli::bench {

namespace {

// Greedy decoding of each batch size, as {"batch1": ..., "batchN": ...}, milliseconds per call.
template <typename Decode>
Json time_batches(const AttentionShape& s, Reps reps, const char* what, const Decode& decode) {
  Json out;
  for (const int batch : {1, s.decode_batch}) {
    const auto ts = time_ms([&] { decode(batch); }, reps);
    Json j = summarize(ts);
    j["ms_per_step"] = median(ts) / s.max_steps;
    out[fmt::format("batch{}", batch)] = j;
    std::cerr << fmt::format("# {} greedy decode, batch {}: {:.2f} ms ({:.3f} ms per step)\n", what,
                             batch, median(ts), median(ts) / s.max_steps);
  }
  return out;
}

}  // namespace

Json measure_attention(const AttentionShape& s, Reps greedy, Reps train, const Decoder& show_tell) {
  AttentionDecoderOptions o;
  o.vocab_size = s.vocab;
  o.encoder_dim = s.encoder_dim;
  o.embed_size = s.embed;
  o.hidden_size = s.hidden;
  o.attention_dim = s.attention_dim;
  o.dropout = 0.5;  // sgrvinod's
  o.attention_reg = 1.0;
  torch::manual_seed(s.seed);
  AttentionDecoder decoder(o);
  auto gen = at::detail::createCPUGenerator(s.seed + 1);
  const int max_batch = std::max(s.decode_batch, s.train_batch);
  const torch::Tensor grids = torch::randn({max_batch, s.cells, s.encoder_dim}, gen);
  Json out;

  decoder->eval();
  const AttentionStepper stepper(decoder);
  {
    torch::NoGradGuard no_grad;
    out["attention_greedy_ms"] = time_batches(s, greedy, "attention", [&](int batch) {
      greedy_ids(stepper, grids.narrow(0, 0, batch), s.max_steps);
    });
    const DecoderStepper st(show_tell);
    const torch::Tensor vectors = torch::randn({max_batch, show_tell->options().embed_size}, gen);
    out["show_tell_greedy_ms"] = time_batches(s, greedy, "Show and Tell", [&](int batch) {
      greedy_ids(st, vectors.narrow(0, 0, batch), s.max_steps);
    });
  }
  Json ratio;
  for (const auto& [key, j] : out["attention_greedy_ms"].items())
    ratio[key] =
        j["median"].get<double>() / out["show_tell_greedy_ms"][key]["median"].get<double>();
  out["attention_step_vs_show_tell"] = ratio;

  decoder->train();
  detail::FusedAdam adam(decoder->parameters(), torch::optim::AdamOptions(1e-3));
  const std::int64_t batch = s.train_batch, len = s.caption_len;
  const torch::Tensor grid = grids.narrow(0, 0, batch);
  torch::Tensor captions = torch::randint(4, s.vocab, {batch, len}, gen, torch::kLong);
  captions.select(1, 0).fill_(o.start_id);
  captions.select(1, len - 1).fill_(2);
  const torch::Tensor lengths = torch::full({batch}, len, torch::kLong);
  const auto ts = time_ms(
      [&] {
        const torch::Tensor loss = decoder->loss(grid, captions, lengths);
        adam.zero_grad();
        loss.backward();
        adam.step();
      },
      train);
  Json t = summarize(ts);
  t["tokens_per_step"] = batch * (len - 1);
  std::int64_t n = 0;
  for (const auto& p : decoder->parameters()) n += p.numel();
  t["trainable_params"] = n;
  out["attention_train_step_ms"] = t;
  std::cerr << fmt::format("# attention train step: {:.1f} ms\n", median(ts));
  out["attention_config"] = {{"vocab", s.vocab},
                             {"embed", s.embed},
                             {"hidden", s.hidden},
                             {"attention_dim", s.attention_dim},
                             {"encoder_dim", s.encoder_dim},
                             {"cells", s.cells},
                             {"decode_batch", s.decode_batch},
                             {"train_batch", s.train_batch},
                             {"caption_len", s.caption_len},
                             {"max_steps", s.max_steps},
                             {"dropout", 0.5},
                             {"attention_reg", 1.0},
                             {"optimizer", "Adam(lr=1e-3)"}};
  return out;
}

}  // namespace imcap::cli::bench
