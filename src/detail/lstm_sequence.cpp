#include "detail/lstm_sequence.hpp"

#include <ATen/Parallel.h>

#include <vector>

#include "detail/parallel.hpp"

namespace imcap::detail {

void mm_rows(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
             const torch::Tensor& bias) {
  split_rows(out.size(0), [&](int64_t r0, int64_t r1) {
    torch::Tensor part = out.slice(0, r0, r1);
    if (bias.defined()) {
      at::addmm_out(part, bias, a.slice(0, r0, r1), b);
    } else {
      at::mm_out(part, a.slice(0, r0, r1), b);
    }
  });
}

void lstm_cell_forward(torch::Tensor& acts, const torch::Tensor& c_prev, torch::Tensor& c_t,
                       torch::Tensor& tanh_c, torch::Tensor& h_t) {
  const int64_t hidden = c_t.size(1);
  acts.narrow(1, 0, 2 * hidden).sigmoid_();  // i, f
  acts.narrow(1, 2 * hidden, hidden).tanh_();
  acts.narrow(1, 3 * hidden, hidden).sigmoid_();
  at::mul_out(c_t, acts.narrow(1, hidden, hidden), c_prev);
  c_t.addcmul_(acts.narrow(1, 0, hidden), acts.narrow(1, 2 * hidden, hidden));
  at::tanh_out(tanh_c, c_t);
  at::mul_out(h_t, acts.narrow(1, 3 * hidden, hidden), tanh_c);
}

void lstm_cell_backward(const torch::Tensor& acts, const torch::Tensor& tanh_c,
                        const torch::Tensor& c_prev, const torch::Tensor& dy,
                        const torch::Tensor& dh, torch::Tensor& dc, float* d_acts,
                        int64_t d_stride) {
  const int64_t batch = acts.size(0), hidden = tanh_c.size(1);
  const float* act = acts.data_ptr<float>();
  const float* tc = tanh_c.data_ptr<float>();
  const float* c_p = c_prev.data_ptr<float>();
  const float* dy_t = dy.data_ptr<float>();
  const float* dh_p = dh.data_ptr<float>();
  float* dc_p = dc.data_ptr<float>();
  at::parallel_for(0, batch, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* a = act + r * 4 * hidden;
      float* dr = d_acts + r * d_stride;
      const int64_t o = r * hidden;
      for (int64_t k = 0; k < hidden; ++k) {
        const float i = a[k], f = a[hidden + k], g = a[2 * hidden + k], og = a[3 * hidden + k];
        const float dh_k = dy_t[o + k] + dh_p[o + k];
        const float t = tc[o + k];
        const float dc_k = dh_k * og * (1.0f - t * t) + dc_p[o + k];
        dr[k] = dc_k * g * i * (1.0f - i);
        dr[hidden + k] = dc_k * c_p[o + k] * f * (1.0f - f);
        dr[2 * hidden + k] = dc_k * i * (1.0f - g * g);
        dr[3 * hidden + k] = dh_k * t * og * (1.0f - og);
        dc_p[o + k] = dc_k * f;
      }
    }
  });
}

namespace {

// One LSTM layer over time-major inputs (T, B, I).
struct LstmLayer : torch::autograd::Function<LstmLayer> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::Tensor& x, const torch::Tensor& h0,
                                                const torch::Tensor& c0, const torch::Tensor& w_ih,
                                                const torch::Tensor& w_hh,
                                                const torch::Tensor& b_ih,
                                                const torch::Tensor& b_hh) {
    const int64_t steps = x.size(0), batch = x.size(1), hidden = w_hh.size(1);
    const torch::Tensor x2 = x.contiguous().view({steps * batch, x.size(2)});
    // acts: the gates of every step, pre-activation first, then in place their activations.
    torch::Tensor acts = at::empty({steps * batch, 4 * hidden}, x.options());
    mm_rows(acts, x2, w_ih.t(), b_ih + b_hh);
    acts = acts.view({steps, batch, 4 * hidden});
    torch::Tensor hs = at::empty({steps, batch, hidden}, x.options());
    torch::Tensor cs = at::empty_like(hs);
    torch::Tensor tanh_cs = at::empty_like(hs);
    const torch::Tensor w_hh_t = w_hh.t();
    torch::Tensor h = h0.contiguous(), c = c0.contiguous();
    for (int64_t t = 0; t < steps; ++t) {
      torch::Tensor g = acts[t];
      split_rows(batch, [&](int64_t r0, int64_t r1) {
        torch::Tensor part = g.slice(0, r0, r1);
        part.addmm_(h.slice(0, r0, r1), w_hh_t);
      });
      torch::Tensor c_t = cs[t], h_t = hs[t], tanh_c = tanh_cs[t];
      lstm_cell_forward(g, c, c_t, tanh_c, h_t);
      h = h_t;
      c = c_t;
    }
    ctx->save_for_backward({x2, h0, c0, w_ih, w_hh, hs});  // hs: the output, saved as one
    ctx->saved_data["acts"] = acts;
    ctx->saved_data["cs"] = cs;
    ctx->saved_data["tanh_cs"] = tanh_cs;
    ctx->saved_data["input_sizes"] = x.sizes().vec();
    return {hs};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x2 = saved[0], &h0 = saved[1], &c0 = saved[2], &w_ih = saved[3],
                        &w_hh = saved[4];
    const torch::Tensor acts = ctx->saved_data["acts"].toTensor();
    const torch::Tensor& hs = saved[5];
    const torch::Tensor cs = ctx->saved_data["cs"].toTensor();
    const torch::Tensor tanh_cs = ctx->saved_data["tanh_cs"].toTensor();
    const int64_t steps = acts.size(0), batch = acts.size(1), hidden = hs.size(2);
    const torch::Tensor dy = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(hs);
    // d_acts: the gradient of every step's pre-activation gates.
    torch::Tensor d_acts = at::empty_like(acts);
    torch::Tensor dh = at::zeros({batch, hidden}, hs.options());
    torch::Tensor dc = at::zeros({batch, hidden}, hs.options());
    const torch::Tensor c0c = c0.contiguous();
    for (int64_t t = steps - 1; t >= 0; --t) {
      lstm_cell_backward(acts[t], tanh_cs[t], t > 0 ? cs[t - 1] : c0c, dy[t], dh, dc,
                         d_acts[t].data_ptr<float>(), 4 * hidden);
      mm_rows(dh, d_acts[t], w_hh);  // dh of step t-1
    }
    const torch::Tensor d2 = d_acts.view({steps * batch, 4 * hidden});
    const torch::Tensor d2t = d2.t();
    torch::Tensor dx, d_w_ih, d_w_hh, d_b;
    if (ctx->needs_input_grad(0)) {
      dx = at::empty_like(x2);
      mm_rows(dx, d2, w_ih);
      dx = dx.view(ctx->saved_data["input_sizes"].toIntVector());
    }
    if (ctx->needs_input_grad(3)) {
      d_w_ih = at::empty_like(w_ih);
      mm_rows(d_w_ih, d2t, x2);
    }
    if (ctx->needs_input_grad(4)) {
      // h of steps -1 .. T-2, the inputs of W_hh.
      const torch::Tensor h_prev =
          at::cat({h0.unsqueeze(0), hs.narrow(0, 0, steps - 1)}, 0).view({steps * batch, hidden});
      d_w_hh = at::empty_like(w_hh);
      mm_rows(d_w_hh, d2t, h_prev);
    }
    if (ctx->needs_input_grad(5) || ctx->needs_input_grad(6)) d_b = d2.sum(0);
    return {dx, dh, dc, d_w_ih, d_w_hh, d_b, d_b};
  }
};

}  // namespace

bool lstm_sequence_supported(const torch::Tensor& inputs, const torch::nn::LSTM& lstm) {
  if (!inputs.device().is_cpu() || inputs.scalar_type() != torch::kFloat || inputs.dim() != 3 ||
      inputs.size(0) == 0 || inputs.size(1) == 0 || !lstm->options.bias() ||
      !lstm->options.batch_first() || lstm->options.bidirectional() ||
      lstm->options.proj_size() != 0) {
    return false;
  }
  for (const auto& w : lstm->all_weights()) {
    if (!w.device().is_cpu() || w.scalar_type() != torch::kFloat) return false;
  }
  return true;
}

torch::Tensor lstm_sequence(const torch::Tensor& inputs, const torch::Tensor& h0,
                            const torch::Tensor& c0, const torch::nn::LSTM& lstm) {
  const std::vector<torch::Tensor> w = lstm->all_weights();  // per layer: W_ih, W_hh, b_ih, b_hh
  const int64_t layers = lstm->options.num_layers();
  const double dropout = lstm->options.dropout();
  torch::Tensor x = inputs.transpose(0, 1);  // (T, B, I)
  for (int64_t l = 0; l < layers; ++l) {
    if (l > 0 && dropout > 0 && lstm->is_training()) x = torch::dropout(x, dropout, true);
    const auto i = static_cast<std::size_t>(4 * l);
    x = LstmLayer::apply(x, h0[l], c0[l], w[i], w[i + 1], w[i + 2], w[i + 3])[0];
  }
  return x.transpose(0, 1);
}

}  // namespace imcap::detail
