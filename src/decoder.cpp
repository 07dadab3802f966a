#include "imcap/decoder.hpp"

#include <functional>
#include <initializer_list>
#include <mutex>
#include <utility>

#include <fmt/format.h>
#include <torch/torch.h>

#include "detail/compressed_projection.hpp"
#include "detail/huge_pages.hpp"
#include "detail/lstm_sequence.hpp"
#include "detail/parallel.hpp"
#include "detail/tensor_check.hpp"
#include "imcap/error.hpp"

namespace imcap {
namespace {

namespace nn = torch::nn;

// PyTorch's default ignore_index: targets equal to it add nothing to the loss.
constexpr int64_t kIgnoreIndex = -100;

void check_positive(const char* name, int64_t value) {
  if (value <= 0) {
    throw InvalidArgument(fmt::format("{}: expected a positive size, got {}", name, value));
  }
}

// The smallest and largest value of an integer tensor, with one wait for the device on a GPU.
std::pair<int64_t, int64_t> min_max(const torch::Tensor& t) {
  if (t.device().is_cpu()) return {t.min().item<int64_t>(), t.max().item<int64_t>()};
  const torch::Tensor both = torch::stack({t.min(), t.max()}).to(torch::kCPU, torch::kLong);
  return {both[0].item<int64_t>(), both[1].item<int64_t>()};
}

void check_lengths(const torch::Tensor& lengths, int64_t batch, int64_t max_len) {
  detail::check_tensor(lengths.defined() && lengths.dim() == 1 && lengths.size(0) == batch &&
                           !lengths.is_floating_point() && !lengths.is_complex(),
                       "caption lengths", fmt::format("integer lengths of shape [{}]", batch),
                       lengths);
  if (batch == 0) return;
  const auto [lo, hi] = min_max(lengths);
  if (lo < 1 || hi > max_len) {
    throw InvalidArgument(fmt::format(
        "caption lengths: expected values in [1, {}] (the caption width), got min {} and max {}",
        max_len, lo, hi));
  }
}

void check_ids(const torch::Tensor& ids, int64_t vocab_size, const char* what) {
  if (ids.numel() == 0) return;
  const auto [lo, hi] = min_max(ids);
  if (lo < 0 || hi >= vocab_size) {
    throw InvalidArgument(
        fmt::format("{}: expected ids in [0, {}) (the vocabulary), got min {} and max {}", what,
                    vocab_size, lo, hi));
  }
}

}  // namespace

namespace {

// The names of an enum's values, in one table for parsing and printing.
template <typename E>
using EnumNames = std::initializer_list<std::pair<E, const char*>>;

const EnumNames<ImageInject> kImageInjectNames = {
    {ImageInject::kPre, "pre"}, {ImageInject::kPar, "par"}, {ImageInject::kInit, "init"}};
const EnumNames<DecodeWeights> kDecodeWeightsNames = {{DecodeWeights::kFloat32, "float32"},
                                                      {DecodeWeights::kBFloat16, "bfloat16"},
                                                      {DecodeWeights::kInt8, "int8"}};

// "unknown <what> '<name>': expected a, b or c".
template <typename E>
E parse_enum(const EnumNames<E>& names, const std::string& name, const char* what) {
  std::string expected;
  std::size_t i = 0;
  for (const auto& [value, text] : names) {
    if (name == text) return value;
    if (i > 0) expected += i + 1 == names.size() ? " or " : ", ";
    expected += text;
    ++i;
  }
  throw InvalidArgument(fmt::format("unknown {} '{}': expected {}", what, name, expected));
}

template <typename E>
std::string enum_name(const EnumNames<E>& names, E value) {
  for (const auto& [v, text] : names)
    if (v == value) return text;
  return "unknown";
}

}  // namespace

ImageInject parse_image_inject(const std::string& name) {
  return parse_enum(kImageInjectNames, name, "image inject mode");
}

std::string to_string(ImageInject inject) { return enum_name(kImageInjectNames, inject); }

DecodeWeights parse_decode_weights(const std::string& name) {
  return parse_enum(kDecodeWeightsNames, name, "decode weights");
}

std::string to_string(DecodeWeights weights) { return enum_name(kDecodeWeightsNames, weights); }

DecoderState DecoderState::index_select(const torch::Tensor& rows) const {
  DecoderState out;
  out.h = h.index_select(1, rows);
  out.c = c.index_select(1, rows);
  if (image.defined()) out.image = image.index_select(0, rows);
  return out;
}

// The compressed copies of `linear`, with what they were built from: rebuilt when the weight or
// the bias is replaced or changed in place (tensor version counters).
struct DecoderImpl::ProjectionCache {
  struct Entry {
    std::shared_ptr<const detail::CompressedProjection> projection;
    torch::Tensor weight, bias;  // held, so that their addresses cannot be reused by others
    std::vector<const void*> data;
    std::vector<int64_t> versions;
    bool built = false;
  };
  std::mutex mutex;
  Entry bf16, int8;
  // Decoder::loss's (B*T, V) logits buffer, kept between steps: a fresh one of that size
  // (72 MB in the benchmark) comes from mmap and is page-faulted and zeroed by the kernel at
  // every step.
  torch::Tensor loss_buffer;

  // The CPU weights of a decoding step get huge pages (detail/huge_pages.hpp) once they have
  // served kStepsBeforeHugePages steps unchanged: collapsing the benchmark's 27 MB takes 10 to
  // 40 ms, which a one-image caption would not win back. The storages are held, so that their
  // addresses cannot be reused by other weights while they are compared.
  std::vector<c10::Storage> paged;
  std::vector<const void*> paged_data;
  int64_t paged_steps = 0;

  void advise_huge_pages(const std::vector<torch::Tensor>& lstm_weights,
                         const torch::Tensor& projection) {
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
      std::lock_guard<std::mutex> lock(mutex);
      bool same = data == paged_data;
      for (std::size_t i = 0; same && i < storages.size(); ++i)
        same = storages[i].unsafeGetStorageImpl() == paged[i].unsafeGetStorageImpl();
      if (!same) {
        paged = storages;
        paged_data = data;
        paged_steps = 0;
      }
      if (++paged_steps != detail::kStepsBeforeHugePages) return;
    }
    // Outside the lock: other threads go on decoding meanwhile.
    for (const auto& storage : storages)
      detail::advise_huge_pages(storage.data_ptr().get(), storage.nbytes());
  }
};

DecoderImpl::DecoderImpl(const DecoderOptions& options)
    : options_(options), projection_cache_(std::make_shared<ProjectionCache>()) {
  check_positive("vocab_size", options.vocab_size);
  check_positive("embed_size", options.embed_size);
  check_positive("hidden_size", options.hidden_size);
  check_positive("num_layers", options.num_layers);
  if (!(options.dropout >= 0.0 && options.dropout < 1.0)) {
    throw InvalidArgument(
        fmt::format("dropout: expected a value in [0, 1), got {}", options.dropout));
  }
  embed = register_module("embed", nn::Embedding(options.vocab_size, options.embed_size));
  lstm =
      register_module("lstm", nn::LSTM(nn::LSTMOptions(lstm_input_size(), options.hidden_size)
                                           .num_layers(options.num_layers)
                                           .dropout(options.num_layers > 1 ? options.dropout : 0.0)
                                           .batch_first(true)));
  linear = register_module("linear", nn::Linear(options.hidden_size, options.vocab_size));
  if (options.image_inject == ImageInject::kInit) {
    const int64_t state_size = options.num_layers * options.hidden_size;
    init_h = register_module("init_h", nn::Linear(options.embed_size, state_size));
    init_c = register_module("init_c", nn::Linear(options.embed_size, state_size));
  }
}

int64_t DecoderImpl::lstm_input_size() const {
  return options_.image_inject == ImageInject::kPar ? 2 * options_.embed_size : options_.embed_size;
}

void DecoderImpl::check_features(const torch::Tensor& features) const {
  detail::check_tensor(features.defined() && features.dim() == 2 &&
                           features.size(1) == options_.embed_size && features.is_floating_point(),
                       "decoder image features",
                       fmt::format("float features (B, {})", options_.embed_size), features);
}

torch::Tensor DecoderImpl::forward(const torch::Tensor& features, const torch::Tensor& captions,
                                   const torch::Tensor& lengths) {
  return linear(hidden_states(features, captions, lengths));
}

namespace {

// Runs f(begin, end) on consecutive blocks of the rows [r0, r1) of a matrix with `cols` columns,
// each block about 256 KB, so that an elementwise chain over a block stays in the core's cache
// instead of streaming the whole (B*T, V) matrix from memory once per operation, with a temporary
// of that size for each.
// On a GPU the whole range is one block: one kernel over the matrix beats many small ones.
void for_row_blocks(const torch::Tensor& on, int64_t r0, int64_t r1, int64_t cols,
                    const std::function<void(int64_t, int64_t)>& f) {
  if (!on.device().is_cpu()) {
    f(r0, r1);
    return;
  }
  const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(cols, 1));
  for (int64_t q = r0; q < r1; q += rows) f(q, std::min(q + rows, r1));
}

// detail::split_rows on the CPU; on a GPU, one call for all rows (the device runs them in
// parallel, and kernels launched from several host threads would only queue up).
void split_rows_of(const torch::Tensor& on, int64_t n,
                   const std::function<void(int64_t, int64_t)>& f) {
  if (!on.device().is_cpu()) {
    f(0, n);
    return;
  }
  detail::split_rows(n, f);
}

// loss = mean over rows with a target of (logsumexp(x_n) - x_n[t_n]), x = h W^T + b: the output
// projection and cross_entropy(ignore_index) in one. Backward turns the saved logits into
// softmax - onehot in place.
struct ProjectedCrossEntropy : torch::autograd::Function<ProjectedCrossEntropy> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::Tensor& h, const torch::Tensor& w,
                                                const torch::Tensor& b,
                                                const torch::Tensor& targets,
                                                const torch::Tensor& buffer) {
    const int64_t n = h.size(0), v = w.size(0);
    const torch::Tensor hc = h.contiguous();
    torch::Tensor logits = buffer.defined() ? buffer : at::empty({n, v}, h.options());
    torch::Tensor lse = at::empty({n}, h.options());
    split_rows_of(h, n, [&](int64_t r0, int64_t r1) {
      torch::Tensor out = logits.slice(0, r0, r1);
      at::addmm_out(out, b, hc.slice(0, r0, r1), w.t());
      for_row_blocks(h, r0, r1, v, [&](int64_t q0, int64_t q1) {
        torch::Tensor part = lse.slice(0, q0, q1);
        at::logsumexp_out(part, logits.slice(0, q0, q1), /*dim=*/1);
      });
    });
    const torch::Tensor valid = targets.ne(kIgnoreIndex);
    const torch::Tensor picked = logits.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1);
    const torch::Tensor count = valid.sum().to(h.scalar_type());
    const torch::Tensor loss = ((lse - picked) * valid).sum() / count;
    ctx->save_for_backward({hc, w});
    ctx->saved_data["logits"] = logits;
    ctx->saved_data["lse"] = lse;
    ctx->saved_data["targets"] = targets;
    ctx->saved_data["valid"] = valid;
    ctx->saved_data["count"] = count;
    return {loss};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& h = saved[0];
    const torch::Tensor& w = saved[1];
    auto& slot = ctx->saved_data["logits"];
    if (slot.isNone())
      throw InvalidArgument("Decoder::loss: backward can run only once on its graph");
    torch::Tensor g = slot.toTensor();
    slot = c10::IValue();  // the buffer becomes the gradient
    const torch::Tensor lse = ctx->saved_data["lse"].toTensor();
    const torch::Tensor targets = ctx->saved_data["targets"].toTensor();
    const torch::Tensor valid = ctx->saved_data["valid"].toTensor();
    const torch::Tensor scale = grads[0] / ctx->saved_data["count"].toTensor();
    const torch::Tensor row_scale = valid.to(g.scalar_type()) * scale;
    // g = (softmax(x) - onehot(t)) * scale on rows with a target, 0 elsewhere.
    split_rows_of(g, g.size(0), [&](int64_t r0, int64_t r1) {
      for_row_blocks(g, r0, r1, g.size(1), [&](int64_t q0, int64_t q1) {
        g.slice(0, q0, q1)
            .sub_(lse.slice(0, q0, q1).unsqueeze(1))
            .exp_()
            .mul_(row_scale.slice(0, q0, q1).unsqueeze(1));
      });
    });
    g.scatter_add_(1, targets.clamp_min(0).unsqueeze(1), -row_scale.unsqueeze(1));
    const int64_t n = g.size(0), v = g.size(1);
    torch::Tensor grad_h = at::empty_like(h);
    torch::Tensor grad_w = at::empty_like(w);
    split_rows_of(g, n, [&](int64_t r0, int64_t r1) {
      torch::Tensor out = grad_h.slice(0, r0, r1);
      at::mm_out(out, g.slice(0, r0, r1), w);
    });
    split_rows_of(g, v, [&](int64_t r0, int64_t r1) {
      torch::Tensor out = grad_w.slice(0, r0, r1);
      at::mm_out(out, g.slice(1, r0, r1).t(), h);
    });
    return {grad_h, grad_w, g.sum(0), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor DecoderImpl::loss(const torch::Tensor& features, const torch::Tensor& captions,
                                const torch::Tensor& lengths) {
  const torch::Tensor hidden = hidden_states(features, captions, lengths);
  torch::Tensor targets = captions;
  if (lengths.defined())
    targets = captions.masked_fill(~length_mask(lengths, captions.size(1)), kIgnoreIndex);
  const torch::Tensor h = hidden.reshape({-1, options_.hidden_size});
  return ProjectedCrossEntropy::apply(h, linear->weight, linear->bias, targets.reshape({-1}),
                                      loss_buffer(h.size(0), h.options()))[0];
}

torch::Tensor DecoderImpl::loss_buffer(int64_t rows, const torch::TensorOptions& options) {
  const int64_t cols = options_.vocab_size;
  std::lock_guard<std::mutex> lock(projection_cache_->mutex);
  torch::Tensor& buffer = projection_cache_->loss_buffer;
  // Reused only when nothing else holds it or a view of it (a graph not yet backpropagated);
  // it grows to the largest batch (captions of different lengths give different row counts).
  const bool reusable = buffer.defined() && buffer.use_count() == 1 &&
                        buffer.storage().use_count() == 1 && buffer.numel() >= rows * cols &&
                        buffer.options().dtype() == options.dtype() &&
                        buffer.device() == options.device();
  if (!reusable) buffer = at::empty({rows * cols}, options);
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

torch::Tensor DecoderImpl::hidden_states(const torch::Tensor& features,
                                         const torch::Tensor& captions,
                                         const torch::Tensor& lengths) {
  check_features(features);
  const int64_t batch = features.size(0);
  detail::check_tensor(captions.defined() && captions.dim() == 2 && captions.size(0) == batch &&
                           captions.size(1) >= 1 && captions.scalar_type() == torch::kLong,
                       "decoder captions", fmt::format("int64 ids of shape [{}, T >= 1]", batch),
                       captions);
  const int64_t steps = captions.size(1);
  torch::Tensor ids = captions.slice(/*dim=*/1, 0, steps - 1);
  if (lengths.defined()) {
    check_lengths(lengths, batch, steps);
    // Padding may hold anything (even ids outside the vocabulary): embed id 0 there instead.
    ids = ids.masked_fill(~length_mask(lengths, steps - 1), 0);
  }
  check_ids(ids, options_.vocab_size, "decoder captions");
  torch::Tensor words = embed(ids);  // (B, T-1, E): the inputs of steps 1..T-1
  torch::Tensor inputs;
  switch (options_.image_inject) {
    case ImageInject::kPre:
      inputs = torch::cat({features.unsqueeze(1), words}, /*dim=*/1);
      break;
    case ImageInject::kPar:
      inputs = torch::cat({features.new_zeros({batch, 1, options_.embed_size}), words}, 1);
      inputs = torch::cat({inputs, features.unsqueeze(1).expand({batch, steps, -1})}, 2);
      break;
    case ImageInject::kInit:
      inputs = torch::cat({features.new_zeros({batch, 1, options_.embed_size}), words}, 1);
      break;
  }
  const DecoderState state = init_state(features);
  if (detail::lstm_sequence_supported(inputs, lstm))
    return detail::lstm_sequence(inputs, state.h, state.c, lstm);
  return std::get<0>(lstm->forward(inputs, std::make_tuple(state.h, state.c)));
}

DecoderState DecoderImpl::init_state(const torch::Tensor& features) {
  check_features(features);
  const int64_t batch = features.size(0);
  DecoderState state;
  if (options_.image_inject == ImageInject::kInit) {
    auto reshape = [&](const torch::Tensor& flat) {
      return torch::tanh(flat)
          .view({batch, options_.num_layers, options_.hidden_size})
          .transpose(0, 1)
          .contiguous();
    };
    state.h = reshape(init_h(features));
    state.c = reshape(init_c(features));
  } else {
    state.h = features.new_zeros({options_.num_layers, batch, options_.hidden_size});
    state.c = torch::zeros_like(state.h);
  }
  if (options_.image_inject == ImageInject::kPar) state.image = features;
  return state;
}

namespace {

// y = x W^T + b for x [B, K]: a matrix-vector product for one row, where the general product
// (gemm) would first pack all of W, at every decoding step. With several Torch threads and a
// few rows (a beam), the rows of W are split between the threads, each computed by imcap's own
// kernel: the CLI keeps OpenBLAS single-threaded then (cli_common.cpp), and OpenBLAS
// serializes calls made from several threads at once (a split BLAS gemv ran at half the speed
// of one OpenBLAS gemv on 2 threads).
torch::Tensor affine(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  constexpr int64_t kMinRowsToSplit = 512;
  if (x.size(0) <= detail::CompressedProjection::kMaxRows && at::get_num_threads() > 1 &&
      w.size(0) >= kMinRowsToSplit && detail::rowwise_affine_supported(x, w, b)) {
    return detail::rowwise_affine(x, w, b);
  }
  if (x.size(0) != 1) return at::addmm(b, x, w.t());
  return at::addmv(b, w, x[0]).unsqueeze(0);
}

}  // namespace

torch::Tensor DecoderImpl::project(const torch::Tensor& hidden, DecodeWeights weights) {
  const torch::Tensor& w = linear->weight;
  const torch::Tensor& b = linear->bias;
  // Small CPU steps use imcap's kernel in float32 too: the scores that compressed weights
  // recompute are then those of the float32 path, bit for bit.
  if (hidden.size(0) > detail::CompressedProjection::kMaxRows ||
      !detail::rowwise_affine_supported(hidden, w, b)) {
    return affine(hidden, w, b);
  }
  // Inference-mode tensors have no version counter to key a compressed copy on.
  if (weights == DecodeWeights::kFloat32 || w.is_inference() || (b.defined() && b.is_inference()))
    return detail::rowwise_affine(hidden, w, b);
  const std::vector<const void*> data = {w.data_ptr(), b.defined() ? b.data_ptr() : nullptr};
  const std::vector<int64_t> versions = {w._version(), b.defined() ? b._version() : 0};
  std::shared_ptr<const detail::CompressedProjection> projection;
  {
    std::lock_guard<std::mutex> lock(projection_cache_->mutex);
    auto& entry =
        weights == DecodeWeights::kInt8 ? projection_cache_->int8 : projection_cache_->bf16;
    if (!entry.built || !entry.weight.is_same(w) || !entry.bias.is_same(b) || entry.data != data ||
        entry.versions != versions) {
      entry.projection = detail::CompressedProjection::build(w, b, weights);
      entry.weight = w;
      entry.bias = b;
      entry.data = data;
      entry.versions = versions;
      entry.built = true;
    }
    projection = entry.projection;
  }
  if (projection && projection->accepts(hidden)) return projection->forward(hidden, w, b);
  return detail::rowwise_affine(hidden, w, b);
}

DecoderStepOutput DecoderImpl::step_inputs(const torch::Tensor& inputs, const DecoderState& state,
                                           DecodeWeights weights) {
  const bool dropout = is_training() && options_.dropout > 0 && options_.num_layers > 1;
  if (!torch::GradMode::is_enabled() && !dropout) {
    // Inference: the LSTM cell by hand, PyTorch's equations and gate order (i, f, g, o), with
    // one product per weight matrix and no autograd or packed-sequence bookkeeping.
    const std::vector<torch::Tensor> w = lstm->all_weights();  // per layer: W_ih, W_hh, b_ih, b_hh
    projection_cache_->advise_huge_pages(w, linear->weight);
    DecoderStepOutput out;
    std::vector<torch::Tensor> hs, cs;
    torch::Tensor x = inputs;
    for (int64_t l = 0; l < options_.num_layers; ++l) {
      const auto& w_ih = w[static_cast<std::size_t>(4 * l)];
      const auto& w_hh = w[static_cast<std::size_t>(4 * l + 1)];
      const auto& b_ih = w[static_cast<std::size_t>(4 * l + 2)];
      const auto& b_hh = w[static_cast<std::size_t>(4 * l + 3)];
      const torch::Tensor h = state.h[l], c = state.c[l];
      torch::Tensor gates = affine(x, w_ih, b_ih);
      gates += affine(h, w_hh, b_hh);
      const auto chunks = gates.chunk(4, /*dim=*/1);
      const torch::Tensor c_next = chunks[1].sigmoid() * c + chunks[0].sigmoid() * chunks[2].tanh();
      x = chunks[3].sigmoid() * c_next.tanh();
      hs.push_back(x);
      cs.push_back(c_next);
    }
    out.logits = project(x, weights);
    out.state.h = torch::stack(hs);
    out.state.c = torch::stack(cs);
    out.state.image = state.image;
    return out;
  }
  auto [hidden, hc] =
      lstm->forward(inputs.unsqueeze(1), std::make_tuple(state.h, state.c));  // one time step
  DecoderStepOutput out;
  out.logits = linear(hidden.squeeze(1));
  out.state.h = std::get<0>(hc);
  out.state.c = std::get<1>(hc);
  out.state.image = state.image;
  return out;
}

DecoderStepOutput DecoderImpl::start(const torch::Tensor& features, DecodeWeights weights) {
  DecoderState state = init_state(features);
  if (options_.image_inject == ImageInject::kPre) return step_inputs(features, state, weights);
  return step_embedded(features.new_zeros({features.size(0), options_.embed_size}), state, weights);
}

DecoderStepOutput DecoderImpl::step_embedded(const torch::Tensor& word_embeddings,
                                             const DecoderState& state, DecodeWeights weights) {
  detail::check_tensor(state.h.defined() && state.h.dim() == 3 && state.c.defined(),
                       "decoder state h", "a state from init_state, start or step", state.h);
  const int64_t batch = state.h.size(1);
  detail::check_tensor(word_embeddings.defined() && word_embeddings.dim() == 2 &&
                           word_embeddings.size(0) == batch &&
                           word_embeddings.size(1) == options_.embed_size,
                       "decoder step input",
                       fmt::format("word embeddings of shape [{}, {}]", batch, options_.embed_size),
                       word_embeddings);
  if (options_.image_inject == ImageInject::kPar) {
    detail::check_tensor(
        state.image.defined() && state.image.dim() == 2 && state.image.size(0) == batch,
        "decoder state image", fmt::format("features of shape [{}, E]", batch), state.image);
    return step_inputs(torch::cat({word_embeddings, state.image}, /*dim=*/1), state, weights);
  }
  return step_inputs(word_embeddings, state, weights);
}

DecoderStepOutput DecoderImpl::step(const torch::Tensor& ids, const DecoderState& state,
                                    DecodeWeights weights) {
  detail::check_tensor(ids.defined() && ids.dim() == 1 && ids.scalar_type() == torch::kLong,
                       "decoder step ids", "int64 ids of shape [B]", ids);
  check_ids(ids, options_.vocab_size, "decoder step ids");
  return step_embedded(embed(ids), state, weights);
}

torch::Tensor DecoderImpl::sample(const torch::Tensor& features, int64_t max_len, int64_t end_id) {
  check_positive("max_len", max_len);
  if (end_id >= options_.vocab_size) {
    throw InvalidArgument(fmt::format("end_id: expected an id below the vocabulary size {}, got {}",
                                      options_.vocab_size, end_id));
  }
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> generated;
  DecoderStepOutput out = start(features);
  torch::Tensor finished = torch::zeros({features.size(0)}, torch::kBool);
  for (int64_t t = 0; t < max_len; ++t) {
    // max(1), not argmax: the notebooks' `outputs.max(1)[1]`, with the same tie-breaking.
    torch::Tensor ids = std::get<1>(out.logits.max(/*dim=*/1));
    if (end_id >= 0) {
      ids = ids.masked_fill(finished, end_id);
      finished = finished | ids.eq(end_id);
    }
    generated.push_back(ids);
    if (t + 1 == max_len || (end_id >= 0 && finished.all().item<bool>())) break;
    out = step(ids, out.state);
  }
  return torch::stack(generated, /*dim=*/1);
}

torch::Tensor length_mask(const torch::Tensor& lengths, int64_t max_len) {
  detail::check_tensor(lengths.defined() && lengths.dim() == 1 && !lengths.is_floating_point(),
                       "caption lengths", "integer lengths of shape [B]", lengths);
  return torch::arange(max_len, lengths.options().dtype(torch::kLong))
      .unsqueeze(0)
      .lt(lengths.to(torch::kLong).unsqueeze(1));
}

torch::Tensor caption_loss(const torch::Tensor& logits, const torch::Tensor& targets,
                           const torch::Tensor& lengths) {
  detail::check_tensor(logits.defined() && logits.dim() == 3 && logits.is_floating_point(),
                       "caption_loss logits", "float logits (B, T, V)", logits);
  detail::check_tensor(
      targets.defined() && targets.dim() == 2 && targets.size(0) == logits.size(0) &&
          targets.size(1) == logits.size(1) && targets.scalar_type() == torch::kLong,
      "caption_loss targets",
      fmt::format("int64 ids of shape [{}, {}]", logits.size(0), logits.size(1)), targets);
  torch::Tensor t = targets;
  if (lengths.defined()) {
    check_lengths(lengths, targets.size(0), targets.size(1));
    t = targets.masked_fill(~length_mask(lengths, targets.size(1)), kIgnoreIndex);
  }
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(2)}), t.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
}

}  // namespace imcap
