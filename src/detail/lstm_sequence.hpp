// A whole-sequence LSTM for teacher forcing on the CPU, forward and backward (internal).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace imcap::detail {

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
