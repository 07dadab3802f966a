// The decoder's inference step engine (detail/decode_step.hpp).
#include "detail/decode_step.hpp"

#include <torch/torch.h>

#include "detail/compressed_projection.hpp"
#include "detail/huge_pages.hpp"
#include "detail/lstm_sequence.hpp"
#include "detail/parallel.hpp"

namespace imcap::detail {

torch::Tensor step_affine(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  constexpr int64_t kMinRowsToSplit = 512;
  if (x.size(0) <= CompressedProjection::kMaxRows && at::get_num_threads() > 1 &&
      w.size(0) >= kMinRowsToSplit && rowwise_affine_supported(x, w, b)) {
    return rowwise_affine(x, w, b);
  }
  if (x.size(0) > CompressedProjection::kMaxRows && at::get_num_threads() > 1 && b.defined() &&
      x.device().is_cpu()) {
    // Many rows: one general product per thread on its part of them (OpenBLAS itself runs
    // single-threaded under Torch's threads, see split_rows).
    torch::Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
    if (w.size(0) >= x.size(0)) {
      // More outputs than rows: each thread its share of w's rows, so that each packs only its
      // share of the weights (gemm packs all of w for every call).
      const torch::Tensor wt = w.t();
      split_rows(w.size(0), [&](int64_t r0, int64_t r1) {
        torch::Tensor part = out.slice(1, r0, r1);
        at::addmm_out(part, b.slice(0, r0, r1), x, wt.slice(1, r0, r1));
      });
      return out;
    }
    mm_rows(out, x, w.t(), b);
    return out;
  }
  if (x.size(0) != 1) return at::addmm(b, x, w.t());
  return at::addmv(b, w, x[0]).unsqueeze(0);
}

std::pair<torch::Tensor, torch::Tensor> lstm_from_gates(const torch::Tensor& gates,
                                                        const torch::Tensor& c) {
  const auto g = gates.chunk(4, /*dim=*/1);
  torch::Tensor c_next = g[1].sigmoid() * c + g[0].sigmoid() * g[2].tanh();
  torch::Tensor h_next = g[3].sigmoid() * c_next.tanh();
  return {std::move(h_next), std::move(c_next)};
}

torch::Tensor DecodeStep::lstm(const torch::Tensor& inputs, const torch::Tensor& h,
                               const torch::Tensor& c, const std::vector<torch::Tensor>& weights,
                               torch::Tensor& h_next, torch::Tensor& c_next) {
  const int64_t layers = h.size(0);
  std::vector<torch::Tensor> hs, cs;
  torch::Tensor x = inputs;
  for (int64_t l = 0; l < layers; ++l) {
    const auto& w_ih = weights[static_cast<std::size_t>(4 * l)];
    const auto& w_hh = weights[static_cast<std::size_t>(4 * l + 1)];
    const auto& b_ih = weights[static_cast<std::size_t>(4 * l + 2)];
    const auto& b_hh = weights[static_cast<std::size_t>(4 * l + 3)];
    torch::Tensor gates = step_affine(x, w_ih, b_ih);
    gates += step_affine(h[l], w_hh, b_hh);
    auto [h_l, c_l] = lstm_from_gates(gates, c[l]);
    x = h_l;
    hs.push_back(std::move(h_l));
    cs.push_back(std::move(c_l));
  }
  h_next = torch::stack(hs);
  c_next = torch::stack(cs);
  return x;
}

torch::Tensor DecodeStep::project(const torch::Tensor& hidden, const torch::Tensor& w,
                                  const torch::Tensor& b, DecodeWeights weights) {
  // Small CPU steps use imcap's kernel in float32 too: the scores that compressed weights
  // recompute are then those of the float32 path, bit for bit.
  if (hidden.size(0) > CompressedProjection::kMaxRows || !rowwise_affine_supported(hidden, w, b))
    return step_affine(hidden, w, b);
  // Inference-mode tensors have no version counter to key a compressed copy on.
  if (weights == DecodeWeights::kFloat32 || w.is_inference() || (b.defined() && b.is_inference()))
    return rowwise_affine(hidden, w, b);
  const std::vector<const void*> data = {w.data_ptr(), b.defined() ? b.data_ptr() : nullptr};
  const std::vector<int64_t> versions = {w._version(), b.defined() ? b._version() : 0};
  std::shared_ptr<const CompressedProjection> projection;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Compressed& entry = weights == DecodeWeights::kInt8 ? int8_ : bf16_;
    if (!entry.built || !entry.weight.is_same(w) || !entry.bias.is_same(b) || entry.data != data ||
        entry.versions != versions) {
      entry.projection = CompressedProjection::build(w, b, weights);
      entry.weight = w;
      entry.bias = b;
      entry.data = data;
      entry.versions = versions;
      entry.built = true;
    }
    projection = entry.projection;
  }
  if (projection && projection->accepts(hidden)) return projection->forward(hidden, w, b);
  return rowwise_affine(hidden, w, b);
}

void DecodeStep::advise_huge_pages(const std::vector<torch::Tensor>& lstm_weights,
                                   const torch::Tensor& projection) {
  // Collapsing the benchmark's 27 MB takes 10 to 40 ms, which a one-image caption would not
  // win back: only weights that keep serving steps get huge pages.
  std::vector<c10::Storage> storages;
  std::vector<const void*> data;
  storages.reserve(lstm_weights.size() + 1);
  data.reserve(lstm_weights.size() + 1);
  auto add = [&](const torch::Tensor& w) {
    if (!w.defined() || !w.device().is_cpu() || !w.has_storage()) return false;
    storages.push_back(w.storage());
    data.push_back(storages.back().data_ptr().get());
    return true;
  };
  for (const auto& w : lstm_weights)
    if (!add(w)) return;
  if (!add(projection)) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    bool same = data == paged_data_;
    for (std::size_t i = 0; same && i < storages.size(); ++i)
      same = storages[i].unsafeGetStorageImpl() == paged_[i].unsafeGetStorageImpl();
    if (!same) {
      paged_ = storages;
      paged_data_ = data;
      paged_steps_ = 0;
    }
    if (++paged_steps_ != kStepsBeforeHugePages) return;
  }
  // Outside the lock: other threads go on decoding meanwhile.
  for (const auto& storage : storages)
    detail::advise_huge_pages(storage.data_ptr().get(), storage.nbytes());
}

}  // namespace imcap::detail
