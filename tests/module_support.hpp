// Helpers of the encoder and decoder tests: the Python reference, tensor dicts, state names.
#pragma once

#include <torch/torch.h>
#include "catch.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "imcap/decoder.hpp"
#include "imcap/encoder.hpp"
#include "imcap/search.hpp"
#include "imcap/weights.hpp"
#include "support.hpp"

namespace imcap::test::modules {

using imcap::test::eval_decoder;
using imcap::test::TempDir;
using TensorMap = std::map<std::string, torch::Tensor>;
using NamedShapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

inline void python(const std::vector<std::string>& args) {
  const auto r = imcap::test::run_python("models_reference.py", args);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
}

// A torch.save'd plain dict of tensors. The only place that reads weight files in these tests.
inline TensorMap load_tensor_dict(const std::string& path) {
  TensorMap out;
  for (const auto& [name, tensor] : imcap::load_weights(path)) out[name] = tensor;
  return out;
}

// Copies every parameter and buffer of `module` from `tensors`; the key sets must be equal.
inline void assign_state(torch::nn::Module& module, const TensorMap& tensors) {
  torch::NoGradGuard no_grad;
  size_t assigned = 0;
  auto assign = [&](const std::string& name, torch::Tensor& target) {
    INFO(name);
    const auto it = tensors.find(name);
    REQUIRE(it != tensors.end());
    REQUIRE(it->second.sizes() == target.sizes());
    target.copy_(it->second);
    ++assigned;
  };
  for (auto& p : module.named_parameters()) assign(p.key(), p.value());
  for (auto& b : module.named_buffers()) assign(b.key(), b.value());
  CHECK(assigned == tensors.size());
}

inline NamedShapes state_shapes(const torch::nn::Module& module) {
  NamedShapes out;
  for (const auto& p : module.named_parameters()) {
    out.emplace_back(p.key(), p.value().sizes().vec());
  }
  for (const auto& b : module.named_buffers()) out.emplace_back(b.key(), b.value().sizes().vec());
  std::sort(out.begin(), out.end());
  return out;
}

inline std::vector<std::string> state_names(const torch::nn::Module& module) {
  std::vector<std::string> out;
  for (const auto& [name, shape] : state_shapes(module)) out.push_back(name);
  return out;
}

// max |a - ref| / max |ref|
inline double relative_error(const torch::Tensor& a, const torch::Tensor& ref) {
  return ((a - ref).abs().max() / ref.abs().max()).item<double>();
}

inline double max_abs_error(const torch::Tensor& a, const torch::Tensor& ref) {
  return (a - ref).abs().max().item<double>();
}

// The stage (0 = stem .. 4 = layer4) of a backbone parameter name such as "layer3.1.conv1.weight".
inline int stage_of(const std::string& name) {
  if (name.rfind("layer", 0) == 0) return name[5] - '0';
  return 0;
}

inline bool all_equal(const torch::nn::Module& a, const TensorMap& before,
                      const std::string& prefix) {
  for (const auto& b : a.named_buffers()) {
    if (b.key().rfind(prefix, 0) != 0) continue;
    if (!torch::equal(b.value(), before.at(b.key()))) return false;
  }
  return true;
}

inline TensorMap buffers_copy(const torch::nn::Module& m) {
  TensorMap out;
  for (const auto& b : m.named_buffers()) out[b.key()] = b.value().clone();
  return out;
}

// Runs the torchvision reference for `arch` and checks pooled features and logits.
inline void check_resnet_parity(const std::string& arch, int batch, int size) {
  TempDir dir;
  python({"resnet", arch, std::to_string(batch), std::to_string(size), dir.path()});
  const TensorMap weights = load_tensor_dict(dir.file("weights.pt"));
  const TensorMap data = load_tensor_dict(dir.file("data.pt"));
  imcap::ResNetOptions options;
  options.arch = imcap::parse_resnet_arch(arch);
  options.num_classes = 1000;
  imcap::ResNet resnet(options);
  assign_state(*resnet, weights);
  resnet->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor pooled = resnet->forward_pooled(data.at("images"));
  const torch::Tensor logits = resnet->forward(data.at("images"));
  const double pooled_error = relative_error(pooled, data.at("pooled"));
  const double logits_error = relative_error(logits, data.at("logits"));
  INFO(arch);
  CHECK(pooled_error < 1e-4);
  CHECK(logits_error < 1e-4);
}

/// Greedy search keeps float32's words with bfloat16 and int8 decode weights: `stepper(weights)`
/// makes the StepDecoder (DecoderStepper, AttentionStepper) for `features`; the same tokens,
/// log-probabilities within 1e-2.
template <typename MakeStepper>
void check_decode_weights_keep_greedy_words(const MakeStepper& stepper,
                                            const torch::Tensor& features) {
  SearchOptions search;
  search.beam_size = 1;
  search.max_length = 12;
  search.forbid_unk = true;
  search.min_length = 2;
  SpecialTokens special;
  special.end = 2;
  special.unk = 3;
  const auto reference = greedy_search(stepper(DecodeWeights::kFloat32), features, search, special);
  for (const auto weights : {DecodeWeights::kBFloat16, DecodeWeights::kInt8}) {
    INFO(to_string(weights));
    const auto got = greedy_search(stepper(weights), features, search, special);
    REQUIRE(got.size() == reference.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i].tokens == reference[i].tokens);
      CHECK(std::abs(got[i].log_prob - reference[i].log_prob) < 1e-2);
    }
  }
}

}  // namespace imcap::test::modules
