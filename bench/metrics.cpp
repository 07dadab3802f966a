// Metrics benchmark: BLEU-1..4, ROUGE-L and CIDEr-D over a COCO-sized corpus, as `imcap eval`
// computes them. Issue target: 40k images x 5 references in under a second on one core.
//
//   imcap_bench_metrics [ANNOTATIONS.json] [REPEATS=5]
//
// With an annotation file (e.g. captions_val2014.json), every caption of an image is a reference
// and the candidate is the next image's first caption. Without one, a corpus of 40,504 images x
// 5 references is generated from a fixed seed: Zipf-distributed words from a 10k vocabulary,
// captions of 8 to 13 words, candidates sharing about half their words with a reference.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "imcap/coco_dataset.hpp"
#include "imcap/error.hpp"
#include "imcap/metrics.hpp"

namespace {

using References = std::map<std::int64_t, std::vector<std::string>>;
using Candidates = std::map<std::int64_t, std::string>;

void from_annotations(const std::string& path, References& refs, Candidates& cands) {
  const auto annotations = imcap::CocoAnnotations::load(path);
  for (const auto& c : annotations.captions()) refs[c.image_id].push_back(c.caption);
  // Each image's candidate is the first caption of the next image (the last takes the first
  // image's): realistic text, scored against all of the image's own captions.
  for (auto it = refs.begin(); it != refs.end(); ++it) {
    const auto next = std::next(it) == refs.end() ? refs.begin() : std::next(it);
    cands[it->first] = next->second.front();
  }
}

void generate(References& refs, Candidates& cands) {
  constexpr int kImages = 40504, kRefs = 5, kWords = 10000;
  std::mt19937_64 rng(20141231);
  std::vector<double> weights(kWords);
  for (int i = 0; i < kWords; ++i) weights[i] = 1.0 / (i + 1);  // Zipf, s = 1
  std::discrete_distribution<int> word(weights.begin(), weights.end());
  std::uniform_int_distribution<int> length(8, 13);  // COCO captions average 10.5 words
  std::bernoulli_distribution keep(0.5);
  auto sentence = [&](int n) {
    std::vector<int> w(static_cast<std::size_t>(n));
    for (auto& x : w) x = word(rng);
    return w;
  };
  auto text = [](const std::vector<int>& w) {
    std::string s;
    for (int x : w) s += fmt::format("w{} ", x);
    return s;
  };
  for (int img = 0; img < kImages; ++img) {
    std::vector<std::string> r;
    std::vector<int> first;
    for (int k = 0; k < kRefs; ++k) {
      auto w = sentence(length(rng));
      if (k == 0) first = w;
      r.push_back(text(w));
    }
    for (auto& x : first)
      if (!keep(rng)) x = word(rng);
    refs[img] = std::move(r);
    cands[img] = text(first);
  }
}

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace

int main(int argc, char** argv) try {
  References refs;
  Candidates cands;
  const std::string source = argc > 1 ? argv[1] : "";
  if (source.empty())
    generate(refs, cands);
  else
    from_annotations(source, refs, cands);
  const int repeats = argc > 2 ? std::max(1, std::atoi(argv[2])) : 5;
  std::size_t n_refs = 0;
  for (const auto& [id, r] : refs) n_refs += r.size();
  fmt::print("{} images, {} references ({}); {} timed runs after one warm-up\n", cands.size(),
             n_refs, source.empty() ? "generated" : source, repeats);
  std::vector<double> wall, cpu;
  imcap::CorpusScores s;
  for (int rep = 0; rep <= repeats; ++rep) {
    const double c0 = cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    s = imcap::evaluate_captions(refs, cands);
    const double w = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double c = cpu_seconds() - c0;
    if (rep > 0) {
      wall.push_back(w);
      cpu.push_back(c);
    }
  }
  std::sort(wall.begin(), wall.end());
  std::sort(cpu.begin(), cpu.end());
  fmt::print(
      "evaluate_captions: wall median {:.3f} s (min {:.3f}), CPU median {:.3f} s (min {:.3f})\n",
      wall[wall.size() / 2], wall.front(), cpu[cpu.size() / 2], cpu.front());
  fmt::print("Bleu_1..4 {:.6f} {:.6f} {:.6f} {:.6f}  ROUGE_L {:.6f}  CIDEr {:.6f}\n",
             s.corpus.bleu[0], s.corpus.bleu[1], s.corpus.bleu[2], s.corpus.bleu[3],
             s.corpus.rouge_l, s.corpus.cider);
  return 0;
} catch (const imcap::Error& e) {
  fmt::print(stderr, "imcap_bench_metrics: error: {}\n", e.what());
  return 1;
}
