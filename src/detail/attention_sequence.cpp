#include "detail/attention_sequence.hpp"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "detail/cpu_features.hpp"
#include "detail/lstm_sequence.hpp"
#include "detail/parallel.hpp"

namespace imcap::detail {

namespace {

// attend_rows' loops, compiled once for the baseline and once with AVX2 and FMA (below). The
// sums over A and C run in SIMD lanes, in an order fixed by the build: the same inputs give the
// same sums in training and in the searches.
__attribute__((always_inline)) inline void attend_rows_body(
    const AttentionSizes& s, int64_t b0, int64_t b1, const float* hp, const float* grid,
    const float* grid_att, const float* w_fa, float b_fa, const float* gate, float* z, float* alpha,
    float* ctx, float* gated) {
  const int64_t p_n = s.cells, a_n = s.att, c_n = s.enc;
  for (int64_t b = b0; b < b1; ++b) {
    const float* q = hp + b * s.wide() + s.gates;
    float* al = alpha + b * p_n;
    for (int64_t p = 0; p < p_n; ++p) {
      const float* ga = grid_att + (b * p_n + p) * a_n;
      float e = 0.0f;
      if (z != nullptr) {
        float* zr = z + (b * p_n + p) * a_n;
#pragma omp simd reduction(+ : e)
        for (int64_t a = 0; a < a_n; ++a) {
          const float v = std::max(ga[a] + q[a], 0.0f);
          zr[a] = v;
          e += v * w_fa[a];
        }
      } else {
#pragma omp simd reduction(+ : e)
        for (int64_t a = 0; a < a_n; ++a) e += std::max(ga[a] + q[a], 0.0f) * w_fa[a];
      }
      al[p] = e + b_fa;
    }
    const float top = *std::max_element(al, al + p_n);
    float sum = 0.0f;
    for (int64_t p = 0; p < p_n; ++p) sum += (al[p] = std::exp(al[p] - top));
    for (int64_t p = 0; p < p_n; ++p) al[p] /= sum;
    float* cx = ctx + b * c_n;
    std::fill(cx, cx + c_n, 0.0f);
    for (int64_t p = 0; p < p_n; ++p) {
      const float w = al[p];
      const float* g = grid + (b * p_n + p) * c_n;
#pragma omp simd
      for (int64_t c = 0; c < c_n; ++c) cx[c] += w * g[c];
    }
    const float* gt = gate + b * c_n;
    float* gd = gated + b * c_n;
#pragma omp simd
    for (int64_t c = 0; c < c_n; ++c) gd[c] = gt[c] * cx[c];
  }
}

#ifdef IMCAP_X86_KERNELS
__attribute__((target("avx2,fma"))) void attend_rows_avx2(const AttentionSizes& s, int64_t b0,
                                                          int64_t b1, const float* hp,
                                                          const float* grid, const float* grid_att,
                                                          const float* w_fa, float b_fa,
                                                          const float* gate, float* z, float* alpha,
                                                          float* ctx, float* gated) {
  attend_rows_body(s, b0, b1, hp, grid, grid_att, w_fa, b_fa, gate, z, alpha, ctx, gated);
}
#endif

}  // namespace

void attend_rows(const AttentionSizes& s, int64_t b0, int64_t b1, const float* hp,
                 const float* grid, const float* grid_att, const float* w_fa, float b_fa,
                 const float* gate, float* z, float* alpha, float* ctx, float* gated) {
#ifdef IMCAP_X86_KERNELS
  if (have_avx2_fma()) {
    attend_rows_avx2(s, b0, b1, hp, grid, grid_att, w_fa, b_fa, gate, z, alpha, ctx, gated);
    return;
  }
#endif
  attend_rows_body(s, b0, b1, hp, grid, grid_att, w_fa, b_fa, gate, z, alpha, ctx, gated);
}

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// attend_backward_rows' loops, compiled as attend_rows_body is.
__attribute__((always_inline)) inline void attend_backward_body(
    const AttentionSizes& s, int64_t b0, int64_t b1, const float* d_gated, const float* d_alpha,
    const float* grid, const float* w_fa, const float* z, const float* alpha, const float* ctx,
    const float* gate, float* d_ctx, float* d_e, float* d_hp, float* d_grid_att) {
  const int64_t p_n = s.cells, a_n = s.att, c_n = s.enc;
  std::vector<float> d_al(static_cast<std::size_t>(p_n));
  for (int64_t b = b0; b < b1; ++b) {
    const float* dg = d_gated + b * c_n;
    const float* gt = gate + b * c_n;
    const float* cx = ctx + b * c_n;
    float* dcx = d_ctx + b * c_n;
    float* dq = d_hp + b * s.wide() + s.gates;
    float* df = dq + a_n;
#pragma omp simd
    for (int64_t c = 0; c < c_n; ++c) {
      dcx[c] = dg[c] * gt[c];
      df[c] = dg[c] * cx[c] * gt[c] * (1.0f - gt[c]);
    }
    const float* al = alpha + b * p_n;
    float dot = 0.0f;
    for (int64_t p = 0; p < p_n; ++p) {
      const float* g = grid + (b * p_n + p) * c_n;
      float v = d_alpha != nullptr ? d_alpha[b * p_n + p] : 0.0f;
#pragma omp simd reduction(+ : v)
      for (int64_t c = 0; c < c_n; ++c) v += g[c] * dcx[c];
      d_al[static_cast<std::size_t>(p)] = v;
      dot += al[p] * v;
    }
    std::fill(dq, dq + a_n, 0.0f);
    for (int64_t p = 0; p < p_n; ++p) {
      const float de = al[p] * (d_al[static_cast<std::size_t>(p)] - dot);
      d_e[b * p_n + p] = de;
      const float* zr = z + (b * p_n + p) * a_n;
      float* dga = d_grid_att + (b * p_n + p) * a_n;
#pragma omp simd
      for (int64_t a = 0; a < a_n; ++a) {
        const float v = zr[a] > 0.0f ? de * w_fa[a] : 0.0f;
        dga[a] += v;
        dq[a] += v;
      }
    }
  }
}

#ifdef IMCAP_X86_KERNELS
__attribute__((target("avx2,fma"))) void attend_backward_avx2(
    const AttentionSizes& s, int64_t b0, int64_t b1, const float* d_gated, const float* d_alpha,
    const float* grid, const float* w_fa, const float* z, const float* alpha, const float* ctx,
    const float* gate, float* d_ctx, float* d_e, float* d_hp, float* d_grid_att) {
  attend_backward_body(s, b0, b1, d_gated, d_alpha, grid, w_fa, z, alpha, ctx, gate, d_ctx, d_e,
                       d_hp, d_grid_att);
}
#endif

// attend_rows' backward for rows [b0, b1): from the gated context's gradient d_gated (B, C)
// and the attention weights' own gradient d_alpha (B, P, or null), writes the context's
// gradient d_ctx, the attention logits' gradient d_e, f_beta's and decoder_att's shares of
// the stacked projection's gradient d_hp, and adds grid_att's gradient to d_grid_att.
void attend_backward_rows(const AttentionSizes& s, int64_t b0, int64_t b1, const float* d_gated,
                          const float* d_alpha, const float* grid, const float* w_fa,
                          const float* z, const float* alpha, const float* ctx, const float* gate,
                          float* d_ctx, float* d_e, float* d_hp, float* d_grid_att) {
#ifdef IMCAP_X86_KERNELS
  if (have_avx2_fma()) {
    attend_backward_avx2(s, b0, b1, d_gated, d_alpha, grid, w_fa, z, alpha, ctx, gate, d_ctx, d_e,
                         d_hp, d_grid_att);
    return;
  }
#endif
  attend_backward_body(s, b0, b1, d_gated, d_alpha, grid, w_fa, z, alpha, ctx, gate, d_ctx, d_e,
                       d_hp, d_grid_att);
}

struct AttentionSequence : torch::autograd::Function<AttentionSequence> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grid, const Tensor& grid_att,
                               const Tensor& words, const Tensor& h0, const Tensor& c0,
                               const Tensor& w_da, const Tensor& b_da, const Tensor& w_fa,
                               const Tensor& b_fa, const Tensor& w_fb, const Tensor& b_fb,
                               const Tensor& w_ih, const Tensor& w_hh, const Tensor& b_ih,
                               const Tensor& b_hh, const Tensor& row_gates) {
    const AttentionSizes s{grid.size(0), grid.size(1), grid.size(2), w_da.size(0), w_hh.size(0)};
    const int64_t steps = words.size(1), embed = words.size(2), hidden = w_hh.size(1);
    const auto opts = grid.options();
    const Tensor g = grid.contiguous(), ga = grid_att.contiguous(), wfa = w_fa.contiguous();
    const Tensor x_w = words.transpose(0, 1).contiguous().view({steps * s.batch, embed});
    // acts: every step's gates: the words' share with b_ih first, then in place the rest and
    // the activations.
    Tensor acts = at::empty({steps * s.batch, s.gates}, opts);
    mm_rows(acts, x_w, w_ih.narrow(1, 0, embed).t(), b_ih);
    acts = acts.view({steps, s.batch, s.gates});
    if (row_gates.numel() > 0) acts.add_(row_gates.unsqueeze(0));  // the same for every step
    const Tensor w_hcat = at::cat({w_hh, w_da, w_fb}, 0);          // (wide, H)
    const Tensor b_hcat = at::cat({b_hh, b_da, b_fb}, 0);
    const Tensor w_hcat_t = w_hcat.t(), w_ctx_t = w_ih.narrow(1, embed, s.enc).t();
    Tensor hs = at::empty({steps, s.batch, hidden}, opts);
    Tensor cs = at::empty_like(hs), tanh_cs = at::empty_like(hs);
    Tensor zs = at::empty({steps, s.batch, s.cells, s.att}, opts);
    Tensor alphas = at::empty({steps, s.batch, s.cells}, opts);
    Tensor ctxs = at::empty({steps, s.batch, s.enc}, opts);
    Tensor gates = at::empty_like(ctxs), gated = at::empty_like(ctxs);
    Tensor hp = at::empty({s.batch, s.wide()}, opts);
    const float b_fa_value = b_fa.item<float>();
    Tensor h = h0.contiguous(), c = c0.contiguous();
    for (int64_t t = 0; t < steps; ++t) {
      mm_rows(hp, h, w_hcat_t, b_hcat);
      const float* hp_p = hp.data_ptr<float>();
      float *z = zs[t].data_ptr<float>(), *al = alphas[t].data_ptr<float>(),
            *cx = ctxs[t].data_ptr<float>(), *gt = gates[t].data_ptr<float>(),
            *gd = gated[t].data_ptr<float>();
      Tensor gate_t = gates[t];
      at::sigmoid_out(gate_t, hp.narrow(1, s.gates + s.att, s.enc));
      at::parallel_for(0, s.batch, 4, [&](int64_t b0, int64_t b1) {
        attend_rows(s, b0, b1, hp_p, g.data_ptr<float>(), ga.data_ptr<float>(),
                    wfa.data_ptr<float>(), b_fa_value, gt, z, al, cx, gd);
      });
      Tensor a_t = acts[t];
      a_t.add_(hp.narrow(1, 0, s.gates));
      const Tensor gated_t = gated[t];
      split_rows(s.batch, [&](int64_t r0, int64_t r1) {
        a_t.slice(0, r0, r1).addmm_(gated_t.slice(0, r0, r1), w_ctx_t);
      });
      Tensor c_t = cs[t], h_t = hs[t], tanh_c = tanh_cs[t];
      lstm_cell_forward(a_t, c, c_t, tanh_c, h_t);
      h = h_t;
      c = c_t;
    }
    ctx->save_for_backward({g, x_w, h0, c0, wfa, w_ih, hs, alphas});
    ctx->saved_data["w_hcat"] = w_hcat;
    ctx->saved_data["acts"] = acts;
    ctx->saved_data["cs"] = cs;
    ctx->saved_data["tanh_cs"] = tanh_cs;
    ctx->saved_data["zs"] = zs;
    ctx->saved_data["ctxs"] = ctxs;
    ctx->saved_data["gates"] = gates;
    ctx->saved_data["gated"] = gated;
    ctx->saved_data["att"] = s.att;
    return {hs, alphas};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &g = saved[0], &x_w = saved[1], &h0 = saved[2], &c0 = saved[3], &wfa = saved[4],
                 &w_ih = saved[5], &hs = saved[6], &alphas = saved[7];
    const Tensor w_hcat = ctx->saved_data["w_hcat"].toTensor();
    const Tensor acts = ctx->saved_data["acts"].toTensor();
    const Tensor cs = ctx->saved_data["cs"].toTensor();
    const Tensor tanh_cs = ctx->saved_data["tanh_cs"].toTensor();
    const Tensor zs = ctx->saved_data["zs"].toTensor();
    const Tensor ctxs = ctx->saved_data["ctxs"].toTensor();
    const Tensor gates = ctx->saved_data["gates"].toTensor();
    const Tensor gated = ctx->saved_data["gated"].toTensor();
    const int64_t steps = hs.size(0), hidden = hs.size(2), embed = x_w.size(1);
    const AttentionSizes s{g.size(0), g.size(1), g.size(2), ctx->saved_data["att"].toInt(),
                           4 * hidden};
    const int64_t wide = s.wide();
    const Tensor dy = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(hs);
    const Tensor d_alphas = grads[1].defined() ? grads[1].contiguous() : Tensor();
    Tensor d_hp = at::empty({steps, s.batch, wide}, hs.options());  // per step: d(W_hh h), dq, df
    Tensor d_grid_att = at::zeros({s.batch, s.cells, s.att}, hs.options());
    Tensor d_ctxs = at::empty_like(ctxs);
    Tensor d_es = at::empty_like(alphas);
    Tensor d_gated = at::empty({s.batch, s.enc}, hs.options());
    Tensor dh = at::zeros({s.batch, hidden}, hs.options());
    Tensor dc = at::zeros({s.batch, hidden}, hs.options());
    const Tensor c0c = c0.contiguous();
    const Tensor w_ctx = w_ih.narrow(1, embed, s.enc);
    for (int64_t t = steps - 1; t >= 0; --t) {
      Tensor d_hp_t = d_hp[t];
      lstm_cell_backward(acts[t], tanh_cs[t], t > 0 ? cs[t - 1] : c0c, dy[t], dh, dc,
                         d_hp_t.data_ptr<float>(), wide);
      mm_rows(d_gated, d_hp_t.narrow(1, 0, s.gates), w_ctx);
      const float* d_al = d_alphas.defined() ? d_alphas[t].data_ptr<float>() : nullptr;
      at::parallel_for(0, s.batch, 4, [&](int64_t b0, int64_t b1) {
        attend_backward_rows(
            s, b0, b1, d_gated.data_ptr<float>(), d_al, g.data_ptr<float>(), wfa.data_ptr<float>(),
            zs[t].data_ptr<float>(), alphas[t].data_ptr<float>(), ctxs[t].data_ptr<float>(),
            gates[t].data_ptr<float>(), d_ctxs[t].data_ptr<float>(), d_es[t].data_ptr<float>(),
            d_hp_t.data_ptr<float>(), d_grid_att.data_ptr<float>());
      });
      mm_rows(dh, d_hp_t, w_hcat);  // dh of step t-1
    }
    const int64_t rows = steps * s.batch;
    const Tensor d2 = d_hp.view({rows, wide});
    const Tensor d_acts = d2.narrow(1, 0, s.gates);
    variable_list out(16);
    if (ctx->needs_input_grad(0)) {
      // Σ_t alpha_t ⊗ d_ctx_t for every image: (B, P, T) (B, T, C).
      out[0] = at::bmm(alphas.permute({1, 2, 0}), d_ctxs.transpose(0, 1));
    }
    if (ctx->needs_input_grad(1)) out[1] = d_grid_att;
    if (ctx->needs_input_grad(2)) {
      Tensor d_words = at::empty({rows, embed}, hs.options());
      mm_rows(d_words, d_acts, w_ih.narrow(1, 0, embed));
      out[2] = d_words.view({steps, s.batch, embed}).transpose(0, 1);
    }
    out[3] = dh;
    out[4] = dc;
    // h of steps -1 .. T-2, the inputs of the stacked projection.
    const Tensor h_prev =
        at::cat({h0.unsqueeze(0), hs.narrow(0, 0, steps - 1)}, 0).view({rows, hidden});
    Tensor d_w_hcat = at::empty_like(w_hcat);
    mm_rows(d_w_hcat, d2.t(), h_prev);
    const Tensor d_b_hcat = d2.sum(0);
    out[5] = d_w_hcat.narrow(0, s.gates, s.att);
    out[6] = d_b_hcat.narrow(0, s.gates, s.att);
    out[7] = at::mm(d_es.view({1, rows * s.cells}), zs.view({rows * s.cells, s.att}));
    out[8] = d_es.sum().reshape({1});
    out[9] = d_w_hcat.narrow(0, s.gates + s.att, s.enc);
    out[10] = d_b_hcat.narrow(0, s.gates + s.att, s.enc);
    if (ctx->needs_input_grad(11)) {
      out[11] = at::empty_like(w_ih);
      mm_rows(out[11], d_acts.t(), at::cat({x_w, gated.view({rows, s.enc})}, 1));
    }
    out[12] = d_w_hcat.narrow(0, 0, s.gates);
    out[13] = d_b_hcat.narrow(0, 0, s.gates);
    out[14] = out[13].clone();
    if (ctx->needs_input_grad(15)) out[15] = d_hp.narrow(2, 0, s.gates).sum(0);
    return out;
  }
};

bool cpu_float(const Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat;
}

}  // namespace

bool attention_sequence_supported(const torch::Tensor& grid, const torch::Tensor& words,
                                  const AttentionSequenceWeights& w,
                                  const torch::Tensor& row_gates) {
  if (!cpu_float(grid) || !cpu_float(words) || words.size(1) == 0 || grid.size(0) == 0)
    return false;
  if (row_gates.defined() && !cpu_float(row_gates)) return false;
  for (const Tensor* t :
       {&w.decoder_att_weight, &w.decoder_att_bias, &w.full_att_weight, &w.full_att_bias,
        &w.f_beta_weight, &w.f_beta_bias, &w.w_ih, &w.w_hh, &w.b_ih, &w.b_hh}) {
    if (!cpu_float(*t)) return false;
  }
  return true;
}

std::pair<torch::Tensor, torch::Tensor> attention_sequence(
    const torch::Tensor& grid, const torch::Tensor& grid_att, const torch::Tensor& words,
    const torch::Tensor& h0, const torch::Tensor& c0, const AttentionSequenceWeights& w,
    const torch::Tensor& row_gates) {
  const variable_list out = AttentionSequence::apply(
      grid, grid_att, words, h0, c0, w.decoder_att_weight, w.decoder_att_bias, w.full_att_weight,
      w.full_att_bias, w.f_beta_weight, w.f_beta_bias, w.w_ih, w.w_hh, w.b_ih, w.b_hh,
      // A custom autograd function takes no undefined input: none is an empty tensor.
      row_gates.defined() ? row_gates : at::empty({0}, grid.options()));
  return {out[0].transpose(0, 1), out[1].transpose(0, 1)};
}

}  // namespace imcap::detail
