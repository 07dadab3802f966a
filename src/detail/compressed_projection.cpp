#include "detail/compressed_projection.hpp"

#include "detail/huge_pages.hpp"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "detail/cpu_features.hpp"

#ifdef IMCAP_X86_KERNELS
#include <immintrin.h>
#endif

namespace imcap::detail {
namespace {

// The least number of weight rows worth a thread (at::parallel_for's grain: with OpenMP each
// thread gets one contiguous part of the rows).
constexpr int64_t kRowsPerTask = 256;

// Weight rows scored against every row of x before the next ones: 64 rows of 512 are 128 KB in
// float32, so a block is read from memory once and from the core's L2 cache for the other rows
// of x (beam search scores 3 to 16 rows per step).
constexpr int64_t kBlockRows = 64;

// f(j, r) for every weight row j in [begin, end) and row r of x, block by block.
template <typename F>
void for_blocks(int64_t begin, int64_t end, int64_t batch, F&& f) {
  for (int64_t block = begin; block < end; block += kBlockRows) {
    const int64_t block_end = std::min(end, block + kBlockRows);
    for (int64_t r = 0; r < batch; ++r) {
      for (int64_t j = block; j < block_end; ++j) f(j, r);
    }
  }
}

std::uint16_t to_bfloat16(float v) {  // round to nearest even; v finite
  std::uint32_t bits = 0;
  std::memcpy(&bits, &v, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

float from_bfloat16(std::uint16_t h) {
  const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float v = 0.0f;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// The weights as floats, one (scalar) or eight (AVX2) at a time.
struct Float32Weights {
  static float one(const float* w) { return *w; }
#ifdef IMCAP_X86_KERNELS
  __attribute__((target("avx2,fma"))) static __m256 eight(const float* w) {
    return _mm256_loadu_ps(w);
  }
#endif
};

struct BFloat16Weights {
  static float one(const std::uint16_t* w) { return from_bfloat16(*w); }
#ifdef IMCAP_X86_KERNELS
  __attribute__((target("avx2,fma"))) static __m256 eight(const std::uint16_t* w) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
#endif
};

struct Int8Weights {
  static float one(const std::int8_t* w) { return static_cast<float>(*w); }
#ifdef IMCAP_X86_KERNELS
  __attribute__((target("avx2,fma"))) static __m256 eight(const std::int8_t* w) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  }
#endif
};

template <typename Weights, typename T>
float dot_scalar(const T* w, const float* x, int64_t k) {
  float sum = 0.0f;
  for (int64_t i = 0; i < k; ++i) sum += Weights::one(w + i) * x[i];
  return sum;
}

#ifdef IMCAP_X86_KERNELS

// How far ahead of its loads the dot product asks for weights: 16 KB, eight float32 rows of
// 512. A decoding step streams tens of MB once; with the hardware prefetcher alone the cores
// wait on the last-level cache (docs/performance.md#decoding-memory).
constexpr std::uintptr_t kPrefetchBytes = 16384;

// Four independent accumulators of eight lanes hide the FMA latency.
template <typename Weights, typename T>
__attribute__((target("avx2,fma"))) float dot_avx2(const T* w, const float* x, int64_t k) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  // Integer arithmetic: the address may lie past the weights (a prefetch never faults).
  const std::uintptr_t ahead = reinterpret_cast<std::uintptr_t>(w) + kPrefetchBytes;
  for (; i + 32 <= k; i += 32) {
    const std::uintptr_t line = ahead + static_cast<std::uintptr_t>(i) * sizeof(T);
    _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
    if (sizeof(T) * 32 > 64) _mm_prefetch(reinterpret_cast<const char*>(line + 64), _MM_HINT_T0);
    a0 = _mm256_fmadd_ps(Weights::eight(w + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(Weights::eight(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    a2 = _mm256_fmadd_ps(Weights::eight(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
    a3 = _mm256_fmadd_ps(Weights::eight(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
  }
  const __m256 a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s) + dot_scalar<Weights>(w + i, x + i, k - i);
}

#endif

// w . x over k values, with AVX2 and FMA where the CPU has them.
template <typename Weights, typename T>
float dot(const T* w, const float* x, int64_t k) {
#ifdef IMCAP_X86_KERNELS
  if (have_avx2_fma()) return dot_avx2<Weights>(w, x, k);
#endif
  return dot_scalar<Weights>(w, x, k);
}

// A bound on the relative rounding error of a float dot product of length k in any summation
// order (k u per term, doubled for the scaling and the bias), with u = 2^-24.
double rounding_factor(int64_t k) { return static_cast<double>(k + 16) * std::ldexp(1.0, -23); }

// v as a float no smaller than v (a bound must not shrink when stored).
float round_up(double v) {
  const auto f = static_cast<float>(v);
  return static_cast<double>(f) >= v ? f
                                     : std::nextafter(f, std::numeric_limits<float>::infinity());
}

// One float32 score, W_j . x + b_j: the float32 decoding path and the compressed path's
// recomputation both call this (not inlined: one code, one rounding), so their scores are equal.
__attribute__((noinline)) float float32_score(const float* w_j, const float* x, int64_t k,
                                              float b_j) {
  return dot<Float32Weights>(w_j, x, k) + b_j;
}

}  // namespace

bool rowwise_affine_supported(const torch::Tensor& x, const torch::Tensor& w,
                              const torch::Tensor& b) {
  auto plain = [](const torch::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.layout() == torch::kStrided;
  };
  return x.defined() && w.defined() && x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1) &&
         plain(x) && plain(w) && w.is_contiguous() &&
         (!b.defined() || (plain(b) && b.dim() == 1 && b.size(0) == w.size(0)));
}

torch::Tensor rowwise_affine(const torch::Tensor& x, const torch::Tensor& w,
                             const torch::Tensor& b) {
  const torch::Tensor xc = x.contiguous();
  const torch::Tensor bc = b.defined() ? b.contiguous() : torch::zeros({w.size(0)}, w.options());
  const int64_t batch = xc.size(0), rows = w.size(0), k = w.size(1);
  torch::Tensor out = at::empty({batch, rows}, w.options());
  const float* wp = w.data_ptr<float>();
  const float* xp = xc.data_ptr<float>();
  const float* bp = bc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for_blocks(begin, end, batch, [&](int64_t j, int64_t r) {
      op[r * rows + j] = float32_score(wp + j * k, xp + r * k, k, bp[j]);
    });
  });
  return out;
}

std::shared_ptr<const CompressedProjection> CompressedProjection::build(const torch::Tensor& weight,
                                                                        const torch::Tensor& bias,
                                                                        DecodeWeights type) {
  if (type == DecodeWeights::kFloat32 || !weight.defined() || weight.dim() != 2 ||
      !weight.device().is_cpu() || weight.scalar_type() != torch::kFloat ||
      weight.layout() != torch::kStrided || weight.size(0) == 0 || weight.size(1) == 0) {
    return nullptr;
  }
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != weight.size(0) ||
                         !bias.device().is_cpu() || bias.scalar_type() != torch::kFloat)) {
    return nullptr;
  }
  const torch::Tensor w = weight.contiguous();
  std::shared_ptr<CompressedProjection> p(new CompressedProjection());
  p->type_ = type;
  p->rows_ = w.size(0);
  p->cols_ = w.size(1);
  const int64_t rows = p->rows_, cols = p->cols_;
  const auto n = static_cast<std::size_t>(rows * cols);
  if (type == DecodeWeights::kBFloat16) {
    p->bf16_.resize(n);
  } else {
    p->int8_.resize(n);
    p->scale_.resize(static_cast<std::size_t>(rows));
  }
  p->bias_.assign(static_cast<std::size_t>(rows), 0.0f);
  if (bias.defined()) {
    const torch::Tensor b = bias.contiguous();
    std::copy_n(b.data_ptr<float>(), rows, p->bias_.begin());
  }
  p->err_per_norm_.resize(static_cast<std::size_t>(rows));
  p->err_const_.resize(static_cast<std::size_t>(rows));
  const double gamma = rounding_factor(cols);
  const float* src = w.data_ptr<float>();
  std::atomic<bool> ok{true};
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end && ok; ++j) {
      const float* row = src + j * cols;
      const auto uj = static_cast<std::size_t>(j);
      double max_abs = 0.0;
      for (int64_t i = 0; i < cols; ++i) {
        if (!std::isfinite(row[i])) {
          ok = false;
          return;
        }
        max_abs = std::max(max_abs, std::fabs(static_cast<double>(row[i])));
      }
      // |W_j|, |W~_j| and |W_j - W~_j|, in double.
      double norm = 0.0, norm_compressed = 0.0, norm_error = 0.0;
      if (type == DecodeWeights::kBFloat16) {
        std::uint16_t* out = p->bf16_.data() + j * cols;
        for (int64_t i = 0; i < cols; ++i) {
          out[i] = to_bfloat16(row[i]);
          const double approx = from_bfloat16(out[i]);
          if (!std::isfinite(approx)) {
            ok = false;
            return;
          }
          norm += static_cast<double>(row[i]) * row[i];
          norm_compressed += approx * approx;
          norm_error += (row[i] - approx) * (row[i] - approx);
        }
      } else {
        std::int8_t* out = p->int8_.data() + j * cols;
        // Rows of only tiny values are stored as zeros (their scale would be subnormal): the
        // bound then is the row's own norm.
        const float scale =
            max_abs < std::ldexp(1.0, -100) ? 0.0f : static_cast<float>(max_abs / 127.0);
        p->scale_[uj] = scale;
        for (int64_t i = 0; i < cols; ++i) {
          const double q =
              scale == 0.0f
                  ? 0.0
                  : std::clamp(std::nearbyint(static_cast<double>(row[i]) / scale), -127.0, 127.0);
          out[i] = static_cast<std::int8_t>(q);
          const double approx = static_cast<double>(scale) * q;
          norm += static_cast<double>(row[i]) * row[i];
          norm_compressed += approx * approx;
          norm_error += (row[i] - approx) * (row[i] - approx);
        }
      }
      // |compressed score - float32 score| <= |W_j - W~_j| |x| (Cauchy-Schwarz) plus the
      // rounding of both products, each at most gamma (sum |terms| + |b_j|), with the sums of
      // |terms| bounded by |W_j| |x| and |W~_j| |x|. Widened by 2^-10 for the bound's own
      // float arithmetic, and rounded up to float. Underflow (subnormal products and sums, or
      // their flushing to zero) adds at most 2^-126 per operation of either product, which the
      // relative terms do not cover.
      constexpr double kMargin = 1.0 + 1.0 / 1024;
      const double b = std::fabs(static_cast<double>(p->bias_[uj]));
      const double underflow = static_cast<double>(2 * cols + 8) * std::ldexp(1.0, -126);
      p->err_per_norm_[uj] =
          round_up(kMargin * (std::sqrt(norm_error) +
                              gamma * (std::sqrt(norm) + std::sqrt(norm_compressed))));
      p->err_const_[uj] = round_up(kMargin * 2.0 * gamma * b + underflow);
      if (!std::isfinite(p->err_per_norm_[uj]) || !std::isfinite(p->err_const_[uj])) {
        ok = false;
        return;
      }
    }
  });
  if (!ok) return nullptr;
  if (type == DecodeWeights::kBFloat16) {
    advise_huge_pages(p->bf16_.data(), p->bf16_.size() * sizeof(std::uint16_t));
  } else {
    advise_huge_pages(p->int8_.data(), p->int8_.size());
  }
  return p;
}

bool CompressedProjection::accepts(const torch::Tensor& x) const {
  return x.defined() && x.dim() == 2 && x.size(1) == cols_ && x.size(0) >= 1 &&
         x.size(0) <= kMaxRows && x.device().is_cpu() && x.scalar_type() == torch::kFloat &&
         x.layout() == torch::kStrided;
}

void CompressedProjection::scores(const float* x, int64_t batch, int64_t begin, int64_t end,
                                  float* out) const {
  if (type_ == DecodeWeights::kBFloat16) {
    for_blocks(begin, end, batch, [&](int64_t j, int64_t r) {
      out[r * rows_ + j] = dot<BFloat16Weights>(bf16_.data() + j * cols_, x + r * cols_, cols_) +
                           bias_[static_cast<std::size_t>(j)];
    });
  } else {
    for_blocks(begin, end, batch, [&](int64_t j, int64_t r) {
      const auto uj = static_cast<std::size_t>(j);
      out[r * rows_ + j] =
          scale_[uj] * dot<Int8Weights>(int8_.data() + j * cols_, x + r * cols_, cols_) + bias_[uj];
    });
  }
}

torch::Tensor CompressedProjection::forward(const torch::Tensor& x, const torch::Tensor& weight,
                                            const torch::Tensor& bias) const {
  const torch::Tensor xc = x.contiguous();
  const int64_t batch = xc.size(0);
  torch::Tensor out = at::empty({batch, rows_}, xc.options());
  const float* xp = xc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows_, kRowsPerTask,
                   [&](int64_t begin, int64_t end) { scores(xp, batch, begin, end, op); });

  const torch::Tensor wc = weight.contiguous();
  const float* wp = wc.data_ptr<float>();
  const int64_t top = std::min(kExactTop, rows_);
  std::vector<std::int64_t> candidates;
  for (int64_t r = 0; r < batch; ++r) {
    const float* xr = xp + r * cols_;
    double norm = 0.0;
    for (int64_t i = 0; i < cols_; ++i) norm += static_cast<double>(xr[i]) * xr[i];
    norm = std::sqrt(norm);
    float* o = op + r * rows_;
    auto error = [&](int64_t j) {
      const auto uj = static_cast<std::size_t>(j);
      return static_cast<double>(err_per_norm_[uj]) * norm + err_const_[uj];
    };
    // The top-th highest lower bound, over a small sorted array (descending).
    std::array<double, kExactTop> best;
    best.fill(-std::numeric_limits<double>::infinity());
    bool finite = std::isfinite(norm);
    for (int64_t j = 0; j < rows_ && finite; ++j) {
      finite = std::isfinite(o[j]);
      const double lower = o[j] - error(j);
      if (lower > best[static_cast<std::size_t>(top - 1)]) {
        auto k = static_cast<std::size_t>(top - 1);
        for (; k > 0 && best[k - 1] < lower; --k) best[k] = best[k - 1];
        best[k] = lower;
      }
    }
    const double threshold = best[static_cast<std::size_t>(top - 1)];
    candidates.clear();
    for (int64_t j = 0; j < rows_ && finite; ++j) {
      if (o[j] + error(j) >= threshold) candidates.push_back(j);
    }
    if (!finite || static_cast<int64_t>(candidates.size()) > rows_ / 4) {
      // Inputs too large for the bounds, or no separation: the float32 product.
      out[r].copy_(rowwise_affine(xc.slice(0, r, r + 1), weight, bias)[0]);
      continue;
    }
    for (const int64_t j : candidates) {
      o[j] = float32_score(wp + j * cols_, xr, cols_, bias_[static_cast<std::size_t>(j)]);
    }
  }
  return out;
}

}  // namespace imcap::detail
