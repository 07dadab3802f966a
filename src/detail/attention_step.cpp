// The attention decoder's inference step engine (detail/attention_step.hpp).
#include "detail/attention_step.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <utility>

#include "detail/lstm_sequence.hpp"

namespace imcap::detail {

namespace {

bool cpu_float(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat;
}

}  // namespace

bool AttentionStep::supported(const torch::Tensor& h, const AttentionSequenceWeights& w,
                              const torch::Tensor& fc_weight) {
  if (torch::GradMode::is_enabled() || !cpu_float(h) || !cpu_float(fc_weight)) return false;
  for (const torch::Tensor* t :
       {&w.decoder_att_weight, &w.decoder_att_bias, &w.full_att_weight, &w.full_att_bias,
        &w.f_beta_weight, &w.f_beta_bias, &w.w_ih, &w.w_hh, &w.b_ih, &w.b_hh}) {
    if (!cpu_float(*t)) return false;
  }
  return true;
}

std::pair<torch::Tensor, torch::Tensor> AttentionStep::stacked(const AttentionSequenceWeights& w) {
  const std::vector<torch::Tensor> sources = {w.w_hh, w.decoder_att_weight, w.f_beta_weight,
                                              w.b_hh, w.decoder_att_bias,   w.f_beta_bias};
  std::vector<const void*> data;
  std::vector<int64_t> versions;
  for (const auto& t : sources) {
    if (t.is_inference()) return {};
    data.push_back(t.data_ptr());
    versions.push_back(t._version());
  }
  std::lock_guard<std::mutex> lock(mutex_);
  bool same = sources_.size() == sources.size() && data == data_ && versions == versions_;
  for (std::size_t i = 0; same && i < sources.size(); ++i) same = sources_[i].is_same(sources[i]);
  if (!same) {
    stacked_weight_ = torch::cat({w.w_hh, w.decoder_att_weight, w.f_beta_weight}, 0).contiguous();
    stacked_bias_ = torch::cat({w.b_hh, w.decoder_att_bias, w.f_beta_bias}, 0).contiguous();
    sources_ = sources;
    data_ = std::move(data);
    versions_ = std::move(versions);
  }
  return {stacked_weight_, stacked_bias_};
}

torch::Tensor AttentionStep::forward(const AttentionSequenceWeights& w,
                                     const torch::Tensor& fc_weight, const torch::Tensor& fc_bias,
                                     const torch::Tensor& words, const torch::Tensor& grid,
                                     const torch::Tensor& grid_att, torch::Tensor& h,
                                     torch::Tensor& c, torch::Tensor& alpha,
                                     const torch::Tensor& row_gates, DecodeWeights weights) {
  const int64_t rows = h.size(0);
  const AttentionSizes s{rows, grid.size(1), grid.size(2), w.decoder_att_weight.size(0),
                         w.w_hh.size(0)};
  // hp: per row W_hh h + b_hh, decoder_att(h), f_beta(h), as training's sequence lays it out.
  const auto [stacked_w, stacked_b] = stacked(w);
  const torch::Tensor hp =
      stacked_w.defined() ? step_affine(h, stacked_w, stacked_b)
                          : torch::cat({step_affine(h, w.w_hh, w.b_hh),
                                        step_affine(h, w.decoder_att_weight, w.decoder_att_bias),
                                        step_affine(h, w.f_beta_weight, w.f_beta_bias)},
                                       1);
  const torch::Tensor g = grid.contiguous(), ga = grid_att.contiguous();
  const torch::Tensor w_fa = w.full_att_weight.contiguous();
  const float b_fa = w.full_att_bias.item<float>();
  torch::Tensor alpha_next = at::empty({rows, s.cells}, h.options());
  torch::Tensor context = at::empty({rows, s.enc}, h.options());
  torch::Tensor gate = at::empty_like(context), gated = at::empty_like(context);
  at::sigmoid_out(gate, hp.narrow(1, s.gates + s.att, s.enc));
  at::parallel_for(0, rows, 4, [&](int64_t b0, int64_t b1) {
    attend_rows(s, b0, b1, hp.data_ptr<float>(), g.data_ptr<float>(), ga.data_ptr<float>(),
                w_fa.data_ptr<float>(), b_fa, gate.data_ptr<float>(), /*z=*/nullptr,
                alpha_next.data_ptr<float>(), context.data_ptr<float>(), gated.data_ptr<float>());
  });
  torch::Tensor acts = step_affine(torch::cat({words, gated}, 1), w.w_ih, w.b_ih);
  acts += hp.narrow(1, 0, s.gates);
  if (row_gates.defined()) acts += row_gates;
  torch::Tensor c_next = torch::empty_like(c), h_next = torch::empty_like(h);
  torch::Tensor tanh_c = torch::empty_like(c);
  lstm_cell_forward(acts, c, c_next, tanh_c, h_next);
  h = std::move(h_next);
  c = std::move(c_next);
  alpha = std::move(alpha_next);
  if (stacked_w.defined())
    projection_.advise_huge_pages({w.w_ih, stacked_w}, fc_weight);
  else
    projection_.advise_huge_pages({w.w_ih, w.w_hh, w.decoder_att_weight, w.f_beta_weight},
                                  fc_weight);
  return projection_.project(h, fc_weight, fc_bias, weights);
}

}  // namespace imcap::detail
