#include "imcap/features.hpp"

#include <atomic>
#include <iostream>
#include <thread>
#include <unordered_set>

#include <fmt/format.h>
#include <torch/torch.h>

#include "detail/io.hpp"
#include "detail/tensor_check.hpp"
#include "imcap/error.hpp"
#include "imcap/weights.hpp"

namespace imcap {

FeatureSet extract_features(ResNet& backbone, const CocoAnnotations& annotations,
                            const std::string& image_root, const FeatureOptions& options) {
  if (options.batch_size < 1)
    throw InvalidArgument(
        fmt::format("features: batch_size {} must be at least 1", options.batch_size));
  if (options.crop < 16 || options.resize < options.crop)
    throw InvalidArgument(fmt::format("features: crop {} and resize {} need 16 <= crop <= resize",
                                      options.crop, options.resize));
  const auto& images = annotations.images();
  if (images.empty()) throw InvalidArgument(fmt::format("{}: no images", annotations.source()));
  if (options.spatial && options.grid < 0)
    throw InvalidArgument(
        fmt::format("features: grid {} must be 0 (the map as it is) or positive", options.grid));
  const torch::Dtype spatial_dtype = options.spatial_dtype;
  if (options.spatial && spatial_dtype != torch::kHalf && spatial_dtype != torch::kBFloat16 &&
      spatial_dtype != torch::kFloat)
    throw InvalidArgument(
        fmt::format("features: spatial_dtype {}: expected float16, bfloat16 or float32",
                    c10::toString(spatial_dtype)));
  const ImageTransform transform = ImageTransform::eval(options.resize, options.crop);
  const DecodeOptions decode = transform.fast_decode_options();
  const torch::Device device = backbone->conv1->weight.device();
  torch::NoGradGuard no_grad;
  backbone->eval();
  std::vector<torch::Tensor> chunks;
  const std::size_t n = images.size(), bs = static_cast<std::size_t>(options.batch_size);
  std::vector<torch::Tensor> batch(bs);
  // On a GPU the forward pass runs asynchronously: its result is fetched only after the next
  // batch is decoded, so decoding overlaps the device's work.
  const bool cuda = device.is_cuda();
  torch::Tensor pending;
  std::size_t pending_end = 0;
  auto fetch_pending = [&] {
    if (!pending.defined()) return;
    chunks.push_back(pending.to(torch::kCPU));
    pending = torch::Tensor();
    if (options.progress)
      std::cerr << fmt::format("\rfeatures: {}/{} images", pending_end, n) << std::flush;
  };
  for (std::size_t start = 0; start < n; start += bs) {
    const std::size_t count = std::min(bs, n - start);
    // Decode the batch's images on `workers` threads; each thread takes every k-th image.
    const int workers = std::max(1, std::min<int>(options.workers, static_cast<int>(count)));
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(workers));
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w) {
      threads.emplace_back([&, w] {
        try {
          for (std::size_t i = static_cast<std::size_t>(w); i < count;
               i += static_cast<std::size_t>(workers)) {
            const auto path = detail::join_path(image_root, images[start + i].file_name);
            batch[i] = transform(decode_image(path, decode));
          }
        } catch (...) {
          errors[static_cast<std::size_t>(w)] = std::current_exception();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& e : errors)
      if (e) std::rethrow_exception(e);
    auto x = torch::stack(std::vector<torch::Tensor>(
        batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(count)));
    fetch_pending();
    // Page-locked memory lets the copy to the GPU run without the host waiting for it.
    if (cuda) x = x.pin_memory();
    x = x.to(device, /*non_blocking=*/cuda);
    pending = options.spatial
                  ? spatial_grid(backbone->forward_features(x, options.compute_dtype), options.grid)
                        .to(spatial_dtype)
                  : backbone->forward_pooled(x, options.compute_dtype);
    pending_end = start + count;
    if (!cuda) fetch_pending();
  }
  fetch_pending();
  if (options.progress) std::cerr << '\n';
  std::vector<std::int64_t> ids;
  ids.reserve(n);
  for (const auto& img : images) ids.push_back(img.id);
  return FeatureSet{torch::cat(chunks), torch::tensor(ids, torch::kInt64)};
}

void save_features(const std::string& path, const FeatureSet& set) {
  TensorMap tensors;
  tensors.insert("features",
                 (set.spatial() ? set.features : set.features.to(torch::kFloat32)).contiguous());
  tensors.insert("image_ids", set.image_ids.to(torch::kInt64).contiguous());
  save_safetensors(path, tensors, {{"format", "imcap-features"}});
}

FeatureSet load_features(const std::string& path) {
  const TensorMap tensors = load_safetensors(path);
  const auto* f = tensors.find("features");
  const auto* ids = tensors.find("image_ids");
  if (f == nullptr || ids == nullptr)
    throw FormatError(fmt::format("{}: expected tensors 'features' and 'image_ids'", path));
  if (f->dim() != 2 && f->dim() != 3)
    throw FormatError(fmt::format(
        "{}: 'features' must be a [N, C] tensor (pooled) or [N, P, C] (grids), got shape {}", path,
        detail::shape_string(*f)));
  if (!f->is_floating_point())
    throw FormatError(fmt::format(
        "{}: 'features' must hold floating-point values (F32, F16, BF16 or F64), got dtype {}",
        path, c10::toString(f->scalar_type())));
  if (ids->dim() != 1 || ids->scalar_type() != torch::kInt64 || ids->size(0) != f->size(0))
    throw FormatError(fmt::format(
        "{}: 'image_ids' must be int64 [N] with N = {} rows of 'features'", path, f->size(0)));
  std::unordered_set<std::int64_t> seen;
  const auto acc = ids->accessor<std::int64_t, 1>();
  for (std::int64_t i = 0; i < acc.size(0); ++i)
    if (!seen.insert(acc[i]).second)
      throw FormatError(fmt::format("{}: image id {} appears twice in 'image_ids'", path, acc[i]));
  // NaN or infinite features would only show up as a diverged loss after a step of training.
  if (f->dim() == 3) {
    const std::int64_t row = detail::first_non_finite_row(*f);
    if (row >= 0)
      throw FormatError(fmt::format(
          "{}: 'features' grid {} (image id {}) holds a NaN or infinite value: expected finite "
          "values",
          path, row, acc[row]));
    return FeatureSet{*f, *ids};
  }
  auto features = f->to(torch::kFloat32);
  if (const auto bad = detail::find_non_finite(features); bad.row >= 0)
    throw FormatError(fmt::format(
        "{}: 'features' row {} (image id {}) holds {} at column {}: expected finite values", path,
        bad.row, acc[bad.row], bad.value, bad.column));
  return FeatureSet{std::move(features), *ids};
}

}  // namespace imcap
