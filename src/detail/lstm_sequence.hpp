// A whole-sequence LSTM for teacher forcing on the CPU, forward and backward (internal).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace imcap::detail {

/// out = a b (+ bias), its rows split between Torch's threads (split_rows).
void mm_rows(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
             const torch::Tensor& bias = {});

/// The LSTM cell's elementwise work for one step on float32 CPU tensors: acts (B, 4H), the
/// pre-activation gates (i, f, g, o), becomes their activations; c_t = f c_prev + i g,
/// tanh_c = tanh(c_t) and h_t = o tanh_c are written in place.
void lstm_cell_forward(torch::Tensor& acts, const torch::Tensor& c_prev, torch::Tensor& c_t,
                       torch::Tensor& tanh_c, torch::Tensor& h_t);

/// lstm_cell_forward's backward: from the activations it left, tanh_c, c_prev, and the
/// gradient of h_t (dy + dh, both contiguous (B, H)) and of c_t (dc), writes the gates'
/// pre-activation gradients to row r of d_acts at d_acts + r * d_stride, and leaves the
/// gradient of c_prev in dc.
void lstm_cell_backward(const torch::Tensor& acts, const torch::Tensor& tanh_c,
                        const torch::Tensor& c_prev, const torch::Tensor& dy,
                        const torch::Tensor& dh, torch::Tensor& dc, float* d_acts,
                        int64_t d_stride);

/// Whether lstm_sequence() takes these inputs: CPU float32, biases present.
bool lstm_sequence_supported(const torch::Tensor& inputs, const torch::nn::LSTM& lstm);

/// torch::nn::LSTM's output (batch_first) for inputs (B, T, I) from the state (h0, c0), each
/// (layers, B, H), with the same equations, gate order (i, f, g, o), dropout between layers in
/// training, and gradients for every input, but computed per layer as one autograd function:
/// the input projection of all steps in one matrix product, then per step one product with
/// W_hh and the cell's elementwise work; backward runs the steps in reverse with one product
/// per step, then the weight gradients of all steps in one product each. The products are
/// split between Torch's threads.
torch::Tensor lstm_sequence(const torch::Tensor& inputs, const torch::Tensor& h0,
                            const torch::Tensor& c0, const torch::nn::LSTM& lstm);

}  // namespace imcap::detail
