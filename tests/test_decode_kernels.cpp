// The kernels of a decoding step: the split float32 product and huge pages for the weights it
// streams (src/detail/compressed_projection.cpp, src/detail/huge_pages.cpp).
#include <torch/torch.h>
#include "catch.hpp"

#include <sys/mman.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "detail/compressed_projection.hpp"
#include "detail/huge_pages.hpp"
#include "imcap/decoder.hpp"
#include "support.hpp"

using imcap::test::eval_decoder;

namespace {

// The AnonHugePages, in bytes, of the mapping that holds the first whole 2 MiB page inside a
// buffer that starts at `data` (madvise splits a mapping where its range begins), from
// /proc/self/smaps; -1 when no mapping holds it or the file cannot be read.
int64_t huge_bytes_at(const void* data) {
  constexpr std::uintptr_t kPage = std::uintptr_t{2} << 20;
  std::ifstream smaps("/proc/self/smaps");
  const std::uintptr_t where = (reinterpret_cast<std::uintptr_t>(data) + kPage - 1) & ~(kPage - 1);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    std::uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> begin >> dash >> end && dash == '-') {
      inside = begin <= where && where < end;
      continue;
    }
    if (inside && line.rfind("AnonHugePages:", 0) == 0) {
      std::istringstream value(line.substr(14));
      int64_t kb = 0;
      value >> kb;
      return kb * 1024;
    }
  }
  return -1;
}

}  // namespace

TEST_CASE("advise_huge_pages backs a tensor with huge pages and keeps its values", "[kernels]") {
  const torch::Tensor t = torch::randn({4096, 512});  // 8 MiB: at least three whole huge pages
  const torch::Tensor copy = t.clone();
  const std::size_t advised = imcap::detail::advise_huge_pages(t);
  CHECK(torch::equal(t, copy));
  if (!imcap::detail::huge_pages_available()) {
    WARN("transparent huge pages are not available here (set to never, or Linux before 6.1)");
    CHECK(advised == 0);
    return;
  }
  CHECK(advised >= std::size_t{6} << 20);
  CHECK(advised <= t.nbytes());
  CHECK(huge_bytes_at(t.data_ptr()) >= static_cast<int64_t>(advised));
}

TEST_CASE("advise_huge_pages declines what it cannot back", "[kernels]") {
  CHECK(imcap::detail::advise_huge_pages(nullptr, std::size_t{64} << 20) == 0);
  CHECK(imcap::detail::advise_huge_pages(torch::Tensor()) == 0);
  const torch::Tensor small = torch::randn({256, 256});  // 256 KiB: no whole huge page inside
  CHECK(imcap::detail::advise_huge_pages(small) == 0);
  const torch::Tensor big = torch::randn({4096, 512});
  CHECK(imcap::detail::advise_huge_pages(big.data_ptr(), 4096) == 0);
}

namespace {

// A [5000, 512] float tensor in a mapping of its own: memory that malloc reuses from an advised
// range would be backed by huge pages already.
torch::Tensor fresh_mapping_weight() {
  constexpr std::size_t bytes = std::size_t{5000} * 512 * sizeof(float);
  void* mapped = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mapped != MAP_FAILED);
  torch::Tensor t = torch::from_blob(
      mapped, {5000, 512}, [](void* p) { munmap(p, bytes); }, torch::kFloat);
  t.copy_(torch::randn({5000, 512}));
  return t;
}

bool thp_always() {
  std::ifstream mode("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(mode, modes);
  return modes.find("[always]") != std::string::npos;
}

// Restores Torch's thread count at the end of a scope, also when a REQUIRE fails.
struct ThreadsGuard {
  int saved = torch::get_num_threads();
  ~ThreadsGuard() { torch::set_num_threads(saved); }
};

}  // namespace

TEST_CASE("decoding steps give the decoder's weights huge pages, also after they are replaced",
          "[kernels][models]") {
  // A 10 MB output projection.
  imcap::Decoder decoder = eval_decoder(5000, 16, 512, /*seed=*/5);
  torch::NoGradGuard no_grad;
  const torch::Tensor features = torch::randn({1, 16});
  if (!imcap::detail::huge_pages_available()) {
    WARN("transparent huge pages are not available here");
    return;
  }
  // Twice: the decoder's own weight, then a new one (set_data, as Module::to does); each is
  // advised after kStepsBeforeHugePages steps, not before.
  for (int round = 0; round < 2; ++round) {
    INFO("round " << round);
    decoder->linear->weight.set_data(fresh_mapping_weight());
    const torch::Tensor weight = decoder->linear->weight;
    for (int64_t step = 1; step < imcap::detail::kStepsBeforeHugePages; ++step)
      decoder->start(features);
    if (!thp_always()) CHECK(huge_bytes_at(weight.data_ptr()) < int64_t{4} << 20);
    const imcap::StepStart out = decoder->start(features);
    CHECK(huge_bytes_at(weight.data_ptr()) >= int64_t{4} << 20);
    CHECK(huge_bytes_at(decoder->lstm->all_weights()[1].data_ptr()) >= int64_t{2} << 20);  // W_hh
    // The scores are rowwise_affine's, the float32 kernel, with or without huge pages.
    CHECK(torch::equal(out.scores,
                       imcap::detail::rowwise_affine(out.state.tensors[0][0], weight.clone(),
                                                     decoder->linear->bias)));
  }
}

TEST_CASE("decoding steps score each row of a beam as if it were alone", "[kernels][models]") {
  ThreadsGuard threads;
  torch::set_num_threads(2);
  // 512 gate rows: the LSTM products use the split kernel too.
  imcap::Decoder decoder = eval_decoder(700, 16, 128, /*seed=*/6);
  torch::NoGradGuard no_grad;
  const torch::Tensor features = torch::randn({3, 16});
  const torch::Tensor ids = torch::randint(0, 700, {3}, torch::kLong);
  imcap::StepStart start = decoder->start(features);
  const torch::Tensor start_scores = start.scores;
  const torch::Tensor step = decoder->step(ids, start.state);
  for (int64_t r = 0; r < 3; ++r) {
    INFO("row " << r);
    imcap::StepStart start1 = decoder->start(features.slice(0, r, r + 1));
    CHECK(torch::equal(start_scores[r], start1.scores[0]));
    const torch::Tensor step1 = decoder->step(ids.slice(0, r, r + 1), start1.state);
    CHECK(torch::equal(start.state.tensors[0][0][r], start1.state.tensors[0][0][0]));  // h
    CHECK(torch::equal(step[r], step1[0]));
  }
}

TEST_CASE("decoding steps run under InferenceMode as under NoGradGuard", "[kernels][models]") {
  imcap::Decoder decoder = eval_decoder(3000, 16, 72, /*seed=*/7);
  const torch::Tensor features = torch::randn({2, 16});
  const torch::Tensor ids = torch::randint(0, 3000, {2}, torch::kLong);
  for (const auto weights : {imcap::DecodeWeights::kFloat32, imcap::DecodeWeights::kBFloat16}) {
    INFO(imcap::to_string(weights));
    torch::Tensor reference;
    {
      torch::NoGradGuard no_grad;
      imcap::DecodeState state = decoder->start(features, weights).state;
      reference = decoder->step(ids, state, weights);
    }
    c10::InferenceMode inference;
    imcap::DecodeState state = decoder->start(features, weights).state;
    const torch::Tensor got = decoder->step(ids, state, weights);
    CHECK(torch::equal(got, reference));
  }
}

TEST_CASE("rowwise_affine equals addmm, row by row whatever the batch and threads", "[kernels]") {
  torch::manual_seed(9);
  ThreadsGuard guard;
  for (const int64_t k : {7, 32, 72, 512}) {
    for (const int64_t rows : {1, 63, 64, 65, 3000}) {
      const torch::Tensor w = torch::randn({rows, k});
      const torch::Tensor b = torch::randn({rows});
      const torch::Tensor x = torch::randn({16, k});
      std::vector<torch::Tensor> single;  // each row of x alone, on one thread
      torch::set_num_threads(1);
      for (int64_t r = 0; r < 16; ++r) {
        single.push_back(imcap::detail::rowwise_affine(x.slice(0, r, r + 1), w, b));
      }
      for (const int threads : {1, 2}) {
        torch::set_num_threads(threads);
        for (const int64_t batch : {1, 3, 16}) {
          INFO("k " << k << ", rows " << rows << ", threads " << threads << ", batch " << batch);
          const torch::Tensor xs = x.slice(0, 0, batch);
          const torch::Tensor got = imcap::detail::rowwise_affine(xs, w, b);
          REQUIRE(got.sizes() == torch::IntArrayRef({batch, rows}));
          const torch::Tensor want = at::addmm(b, xs, w.t());
          CHECK(torch::allclose(got, want, /*rtol=*/1e-5, /*atol=*/1e-4));
          for (int64_t r = 0; r < batch; ++r) CHECK(torch::equal(got[r], single[r][0]));
        }
      }
    }
  }
}
