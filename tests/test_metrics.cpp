// Caption metrics: BLEU-1..4, ROUGE-L and CIDEr-D as coco-caption computes them.
//
// Expected values come from three places: hand derivations written out next to each case, the
// figures the coco-caption demo publishes for its fake-caption results, and an independent Python
// reimplementation (tests/python/caption_metrics_reference.py) run at test time.
#include "catch.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "imcap/coco_dataset.hpp"
#include "imcap/error.hpp"
#include "imcap/metrics.hpp"
#include "support.hpp"

using imcap::CorpusScores;
using imcap::evaluate_captions;
using Refs = std::map<std::int64_t, std::vector<std::string>>;
using Cands = std::map<std::int64_t, std::string>;
using Tokens = std::vector<std::string>;
using json = nlohmann::json;

namespace {

// bleu_scorer.py's constants: a precision with no n-gram to guess is (0 + 1e-15) / (0 + 1e-9).
constexpr double kEmptyPrecision = 1e-15 / 1e-9;
const double kLn2 = std::log(2.0);

Approx near(double v) { return Approx(v).epsilon(1e-8).margin(1e-12); }

const imcap::ImageScores& image(const CorpusScores& s, std::int64_t id) {
  for (const auto& img : s.per_image)
    if (img.image_id == id) return img;
  FAIL("no per-image scores for image " << id);
  throw std::logic_error("unreachable");
}

void check_bleu(const std::array<double, 4>& got, const std::array<double, 4>& expected) {
  for (int n = 0; n < 4; ++n) {
    INFO("BLEU-" << n + 1);
    CHECK(got[n] == near(expected[n]));
  }
}

// The per-order precisions p[0..3] combined as BLEU-1..4 with brevity penalty bp.
std::array<double, 4> bleu_of(const std::array<double, 4>& p, double bp) {
  return {bp * p[0], bp * std::sqrt(p[0] * p[1]), bp * std::cbrt(p[0] * p[1] * p[2]),
          bp * std::pow(p[0] * p[1] * p[2] * p[3], 0.25)};
}

json scores_json(const imcap::CaptionScores& s) {
  return {{"Bleu_1", s.bleu[0]}, {"Bleu_2", s.bleu[1]},  {"Bleu_3", s.bleu[2]},
          {"Bleu_4", s.bleu[3]}, {"ROUGE_L", s.rouge_l}, {"CIDEr", s.cider}};
}

// Every corpus and per-image value agrees with the Python reimplementation's output.
void check_against_reference(const CorpusScores& got, const json& expected) {
  const auto same = [](const json& a, const json& b) {
    for (const char* key : {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}) {
      INFO(key);
      CHECK(a.at(key).get<double>() ==
            Approx(b.at(key).get<double>()).epsilon(1e-12).margin(1e-15));
    }
  };
  same(scores_json(got.corpus), expected.at("corpus"));
  REQUIRE(got.per_image.size() == expected.at("per_image").size());
  for (const auto& img : got.per_image) {
    INFO("image " << img.image_id);
    same(scores_json(img.scores), expected.at("per_image").at(std::to_string(img.image_id)));
  }
}

json run_reference(const std::vector<std::string>& args) {
  const auto r = imcap::test::run_python("caption_metrics_reference.py", args);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return json::parse(r.out);
}

json reference_for(const Refs& refs, const Cands& cands) {
  json input;
  for (const auto& [id, rs] : refs) input["references"][std::to_string(id)] = rs;
  for (const auto& [id, c] : cands) input["candidates"][std::to_string(id)] = c;
  imcap::test::TempDir dir;
  imcap::test::write_text(dir.file("case.json"), input.dump());
  return run_reference({"--input", dir.file("case.json")});
}

}  // namespace

TEST_CASE("evaluation tokenizer keeps lowercase ASCII letters and digits", "[metrics]") {
  using imcap::tokenize_for_eval;
  CHECK(tokenize_for_eval("A man's T-shirt.") == Tokens{"a", "man", "s", "t", "shirt"});
  CHECK(tokenize_for_eval("  Two\tdogs\nplay 2 games  \n") ==
        Tokens{"two", "dogs", "play", "2", "games"});
  CHECK(tokenize_for_eval("1,000 cats;ok") == Tokens{"1", "000", "cats", "ok"});
  CHECK(tokenize_for_eval("Café NOIR") == Tokens{"caf", "noir"});
  CHECK(tokenize_for_eval("...!").empty());
  CHECK(tokenize_for_eval("").empty());
}

TEST_CASE("candidate identical to a reference", "[metrics]") {
  const Refs refs{{1, {"A cat sat.", "the dog ran"}}, {2, {"a bird flew"}}};
  const Cands cands{{1, "a cat sat"}, {2, "a bird flew"}};
  const CorpusScores s = evaluate_captions(refs, cands);
  // BLEU: every n-gram matches and lengths equal, but no candidate has a 4-gram, so coco-caption's
  // 4-gram precision is 1e-15 / 1e-9 and BLEU-4 = (1e-6)^(1/4).
  check_bleu(s.corpus.bleu, bleu_of({1, 1, 1, kEmptyPrecision}, 1.0));
  CHECK(s.corpus.bleu[3] == near(0.031622776601683794));
  // ROUGE-L: LCS = whole caption, P = R = 1.
  CHECK(s.corpus.rouge_l == 1.0);
  // CIDEr-D: N = 2 images; "a" is in both reference sets (idf 0), every other n-gram idf ln 2.
  // Image 1: cosine 1 against "a cat sat" for orders 1-3 and 0 for the empty order 4; 0 against
  // "the dog ran": mean (1+1+1+0)/4 / 2 refs * 10 = 3.75. Image 2: 0.75 / 1 ref * 10 = 7.5.
  CHECK(image(s, 1).scores.cider == near(3.75));
  CHECK(image(s, 2).scores.cider == near(7.5));
  CHECK(s.corpus.cider == near((3.75 + 7.5) / 2));
  CHECK(s.references == 3);
}

TEST_CASE("one-word candidate", "[metrics]") {
  const Refs refs{{1, {"a cat", "cat on a mat"}}, {2, {"a dog"}}};
  const Cands cands{{1, "Cat"}, {2, "a dog"}};
  const CorpusScores s = evaluate_captions(refs, cands);
  // BLEU: image 1: length 1, closest reference length 2; guesses 1,0,0,0, matches 1,0,0,0.
  // Image 2: 2 = 2; guesses 2,1,0,0 all matched. Totals: 3 words vs 4, so BP = exp(1 - 4/3).
  check_bleu(s.corpus.bleu, bleu_of({1, 1, kEmptyPrecision, kEmptyPrecision}, std::exp(-1.0 / 3)));
  // ROUGE-L image 1: LCS 1 with both refs; P = 1, best R = 1/2:
  // F = (1 + 1.44) * 1 * 0.5 / (0.5 + 1.44 * 1) = 1.22 / 1.94.
  CHECK(image(s, 1).scores.rouge_l == near(1.22 / 1.94));
  CHECK(s.corpus.rouge_l == near((1.22 / 1.94 + 1) / 2));
  // CIDEr-D image 1: "a" has idf 0, the rest idf ln 2. Only unigrams exist in the candidate.
  // vs "a cat": cosine 1; lengths (bigram counts) 0 vs 1: penalty exp(-1/72).
  // vs "cat on a mat": cosine ln2^2 / (ln2 * ln2 sqrt 3) = 1/sqrt 3; 0 vs 3: penalty exp(-9/72).
  // (order sums) / 4 orders / 2 refs * 10.
  const double cider1 = 10.0 / 8.0 * (std::exp(-1.0 / 72) + std::exp(-9.0 / 72) / std::sqrt(3.0));
  CHECK(image(s, 1).scores.cider == near(cider1));
  CHECK(image(s, 2).scores.cider == near(5.0));  // cosine 1 for unigrams and bigrams: 2/4*10
  CHECK(s.corpus.cider == near((cider1 + 5.0) / 2));
  // Per-image BLEU is the one-image corpus: 1 word against closest length 2.
  check_bleu(image(s, 1).scores.bleu,
             bleu_of({1, kEmptyPrecision, kEmptyPrecision, kEmptyPrecision}, std::exp(1.0 - 2.0)));
}

TEST_CASE("candidate longer than all its references", "[metrics]") {
  const Refs refs{{7, {"a man rides a horse", "a person on a horse"}}};
  const Cands cands{{7, "a man rides a horse on a beach"}};
  const CorpusScores s = evaluate_captions(refs, cands);
  // 8 words; both refs have 5 (closest 5), so no brevity penalty.
  // Unigrams: a x3 clipped to 2, man, rides, horse, on; beach unmatched: 6/8.
  // Bigrams: a man, man rides, rides a, a horse, on a match; horse on, a beach don't: 5/7.
  // Trigrams: a man rides, man rides a, rides a horse: 3/6. 4-grams: a man rides a, man rides a
  // horse: 2/5.
  check_bleu(s.corpus.bleu, bleu_of({6.0 / 8, 5.0 / 7, 3.0 / 6, 2.0 / 5}, 1.0));
  // ROUGE-L: LCS 5 with the first ref (P 5/8, R 1), 3 with the second: F = 2.44*0.625/1.9.
  CHECK(s.corpus.rouge_l == near(2.44 * 0.625 / 1.9));
  // A single image: log(N) = 0 makes every tf-idf weight 0, so CIDEr-D is 0 (as in coco-caption).
  CHECK(s.corpus.cider == 0.0);
}

TEST_CASE("images with a single reference", "[metrics]") {
  const Refs refs{{1, {"two dogs play"}}, {2, {"a cat sleeps"}}};
  const Cands cands{{1, "two dogs run"}, {2, "a cat sleeps"}};
  const CorpusScores s = evaluate_captions(refs, cands);
  // Guesses 6,4,2,0; matches 5 (two dogs + 3), 3 (two dogs + 2), 1, 0. Lengths 6 = 6.
  check_bleu(s.corpus.bleu, bleu_of({5.0 / 6, 3.0 / 4, 1.0 / 2, kEmptyPrecision}, 1.0));
  CHECK(s.corpus.rouge_l == near((2.0 / 3 + 1) / 2));  // image 1: LCS 2 of 3 and 3
  // CIDEr-D: no word is shared between the images, so every n-gram has idf ln 2, "run" and the
  // n-grams with it included (df 0 counts as 1). Image 1: unigrams 2 L^2 / (L sqrt3)^2 = 2/3,
  // bigrams L^2 / (L sqrt2)^2 = 1/2, trigrams 0: (2/3 + 1/2) / 4 * 10 = 70/24.
  CHECK(image(s, 1).scores.cider == near(70.0 / 24));
  CHECK(image(s, 2).scores.cider == near(7.5));
  CHECK(s.corpus.cider == near((70.0 / 24 + 7.5) / 2));
}

TEST_CASE("n-grams that appear in no reference", "[metrics]") {
  const Refs refs{{1, {"a red car"}}, {2, {"a red bus"}}, {3, {"a blue sky"}}};
  const Cands cands{{1, "a blue car"}, {2, "a red bus"}, {3, "a blue sky"}};
  const CorpusScores s = evaluate_captions(refs, cands);
  // "blue car" is in no reference at all; "blue" only in another image's references.
  check_bleu(s.corpus.bleu, bleu_of({8.0 / 9, 4.0 / 6, 2.0 / 3, kEmptyPrecision}, 1.0));
  CHECK(s.corpus.rouge_l == near((2.0 / 3 + 2) / 3));
  // N = 3: idf(a) = 0, idf(red) = ln 3 - ln 2 = ln 1.5 (df 2), everything else ln 3 (df 1 or 0).
  // Image 1 unigrams: candidate (0, ln3, ln3), reference (0, ln1.5, ln3); only "car" matches:
  // ln3^2 / (sqrt2 ln3 * sqrt(ln1.5^2 + ln3^2)). Bigrams and the trigram don't match.
  const double l3 = std::log(3.0), l15 = std::log(1.5);
  const double cos1 = l3 / (std::sqrt(2.0) * std::sqrt(l15 * l15 + l3 * l3));
  CHECK(image(s, 1).scores.cider == near(cos1 / 4 * 10));
  CHECK(s.corpus.cider == near((cos1 / 4 * 10 + 7.5 + 7.5) / 3));
  // Image 1 alone: 1-gram precision 2/3, no bigram matched.
  check_bleu(image(s, 1).scores.bleu,
             bleu_of({2.0 / 3, 1e-15 / (2 + 1e-9), 1e-15 / (1 + 1e-9), kEmptyPrecision}, 1.0));
}

TEST_CASE(
    "BLEU takes the closest reference length, ties to the shorter, and penalizes corpus totals",
    "[metrics]") {
  // 4 words between references of 3 and 5: the effective length is 3, so no brevity penalty
  // (taking 5 would give exp(1 - 5/4)).
  const auto tie = evaluate_captions({{1, {"a b c", "a b c d e"}}}, {{1, "a b c d"}});
  CHECK(tie.corpus.bleu[0] == near(1.0));
  // Image 1 is short (2 vs 4) and image 2 long (6 vs 2): totals 8 vs 6, so no corpus penalty,
  // although image 1 alone has one.
  const auto s =
      evaluate_captions({{1, {"a b c d"}}, {2, {"x y"}}}, {{1, "a b"}, {2, "x y z w v u"}});
  CHECK(s.corpus.bleu[0] == near(4.0 / 8));
  CHECK(image(s, 1).scores.bleu[0] == near(std::exp(1.0 - 4.0 / 2)));
  // Clipping: "the the the the" against "the cat": 1 of 4 unigrams count.
  const auto clip = evaluate_captions({{1, {"the cat", "cat"}}}, {{1, "the the the the"}});
  CHECK(clip.corpus.bleu[0] == near(1.0 / 4));
}

TEST_CASE("empty captions score zero, as after coco-caption's tokenizer", "[metrics]") {
  const CorpusScores s =
      evaluate_captions({{1, {"a dog", "the cat"}}, {2, {"a cat"}}}, {{1, "!"}, {2, "a cat"}});
  CHECK(image(s, 1).scores.rouge_l == 0.0);
  CHECK(image(s, 1).scores.cider == 0.0);
  CHECK(image(s, 1).scores.bleu[0] == 0.0);  // brevity penalty exp(1 - 2e15)
  // rouge.py splits on " ": an empty candidate is one empty token, which matches an empty
  // reference.
  const CorpusScores e = evaluate_captions({{1, {"a dog", "?"}}}, {{1, ""}});
  CHECK(e.corpus.rouge_l == 1.0);
}

TEST_CASE("only the images of the candidates are evaluated", "[metrics]") {
  const Refs refs{{1, {"a red car"}}, {2, {"a red bus"}}, {3, {"a blue sky"}}};
  Refs relevant = refs;
  relevant.erase(3);
  const Cands cands{{1, "a blue car"}, {2, "a red bus"}};
  const auto a = evaluate_captions(refs, cands);
  const auto b = evaluate_captions(relevant, cands);
  REQUIRE(a.per_image.size() == 2);
  CHECK(a.references == 2);
  CHECK(scores_json(a.corpus) == scores_json(b.corpus));
  // Per-image values add up to the corpus ROUGE-L and CIDEr-D.
  CHECK(a.corpus.cider == near((a.per_image[0].scores.cider + a.per_image[1].scores.cider) / 2));
  CHECK(a.corpus.rouge_l ==
        near((a.per_image[0].scores.rouge_l + a.per_image[1].scores.rouge_l) / 2));
}

TEST_CASE("evaluate_captions rejects what coco-caption cannot score", "[metrics]") {
  using imcap::InvalidArgument;
  CHECK_THROWS_AS(evaluate_captions({{1, {"a"}}}, {}), InvalidArgument);
  CHECK_THROWS_WITH(evaluate_captions({{1, {"a"}}}, {{2, "a"}}), Catch::Contains("image 2"));
  CHECK_THROWS_AS(evaluate_captions({{1, {}}}, {{1, "a"}}), InvalidArgument);
}

TEST_CASE("random corpora agree with the Python reimplementation", "[metrics][python]") {
  const std::vector<std::string> words{"a",   "the", "man",  "dog", "on", "of", "Red",
                                       "red", "cat", "sits", "2",   "x",  "in", "an"};
  const std::vector<std::string> glue{" ", " ", " ", "  ", ", ", ".\n", "'", " - "};
  std::mt19937_64 rng(20240605);
  const auto pick = [&](const std::vector<std::string>& v) {
    return v[std::uniform_int_distribution<std::size_t>(0, v.size() - 1)(rng)];
  };
  const auto caption = [&] {
    std::string s;
    const int n = std::uniform_int_distribution<int>(0, 11)(rng);
    for (int i = 0; i < n; ++i) s += pick(words) + pick(glue);
    return s;
  };
  for (int trial = 0; trial < 3; ++trial) {
    Refs refs;
    Cands cands;
    const int images = 5 + 20 * trial;
    for (int img = 0; img < images; ++img) {
      const std::int64_t id = 1000 + 7 * img;
      const int n_refs = std::uniform_int_distribution<int>(1, 6)(rng);
      for (int r = 0; r < n_refs; ++r) refs[id].push_back(caption());
      cands[id] = caption();
    }
    INFO("trial " << trial);
    check_against_reference(evaluate_captions(refs, cands), reference_for(refs, cands));
  }
}

TEST_CASE("the coco-caption demo's fake captions give its published figures", "[metrics][coco]") {
  const auto annotations =
      imcap::CocoAnnotations::load(imcap::test::data_path("fakecap_refs.json"));
  const auto results = imcap::load_caption_results(imcap::test::data_path("fakecap_results.json"));
  REQUIRE(results.size() == 1000);
  const CorpusScores s = imcap::evaluate_results(annotations, results);
  REQUIRE(s.per_image.size() == 1000);
  CHECK(s.references == 5005);
  // coco-caption README / cocoEvalCapDemo (Java PTB tokenizer, official annotation file).
  CHECK(s.corpus.bleu[0] == Approx(0.579).margin(1.5e-3));
  CHECK(s.corpus.bleu[1] == Approx(0.404).margin(1.5e-3));
  CHECK(s.corpus.bleu[2] == Approx(0.279).margin(1.5e-3));
  CHECK(s.corpus.bleu[3] == Approx(0.191).margin(1.5e-3));
  CHECK(s.corpus.rouge_l == Approx(0.396).margin(1.5e-3));
  CHECK(s.corpus.cider == Approx(0.600).margin(1.5e-3));
  check_against_reference(
      s, run_reference({"--annotations", imcap::test::data_path("fakecap_refs.json"), "--results",
                        imcap::test::data_path("fakecap_results.json")}));
}

TEST_CASE("human captions score BLEU 1 and ROUGE-L 1", "[metrics][coco]") {
  const auto annotations =
      imcap::CocoAnnotations::load(imcap::test::data_path("fakecap_refs.json"));
  const auto results =
      imcap::load_caption_results(imcap::test::data_path("fakecap_human_results.json"));
  const CorpusScores s = imcap::evaluate_results(annotations, results);
  for (const double b : s.corpus.bleu) CHECK(b == near(1.0));
  CHECK(s.corpus.rouge_l == 1.0);
  for (const auto& img : s.per_image) {
    INFO("image " << img.image_id);
    REQUIRE(img.scores.rouge_l == 1.0);
  }
  CHECK(s.corpus.cider > 2.0);  // one of 5 references matched exactly
}

TEST_CASE("results reader names the file and the entry at fault", "[metrics]") {
  using imcap::FormatError;
  using imcap::parse_caption_results;
  const auto fails_with = [](const std::string& text, const std::string& what) {
    INFO(text);
    CHECK_THROWS_AS(parse_caption_results(text, "res.json"), FormatError);
    CHECK_THROWS_WITH(parse_caption_results(text, "res.json"),
                      Catch::StartsWith("res.json: ") && Catch::Contains(what));
  };
  fails_with("[{\"image_id\": 1,", "not valid JSON");
  // nlohmann reports a number too large for a double as out_of_range, not as a parse error.
  fails_with("[{\"image_id\": 1, \"caption\": \"a\", \"score\": 1e500}]", "number overflow");
  fails_with("{\"image_id\": 1, \"caption\": \"a\"}", "expected a list");
  fails_with("[]", "empty");
  fails_with("[{\"image_id\": 1, \"caption\": \"a\"}, 3]", "[1]: expected an object");
  fails_with("[{\"caption\": \"a\"}]", "[0]: missing key 'image_id'");
  fails_with("[{\"image_id\": \"1\", \"caption\": \"a\"}]",
             "[0].image_id: expected an integer, got a string");
  fails_with("[{\"image_id\": 1.5, \"caption\": \"a\"}]",
             "expected an integer, got a floating-point number");
  fails_with("[{\"image_id\": 1}]", "[0]: missing key 'caption'");
  // nlohmann's own errors (a number beyond double, bytes that are not UTF-8) name the file too.
  fails_with("[{\"image_id\": 1e400, \"caption\": \"a\"}]", "1e400");
  fails_with("[{\"image_id\": 1, \"caption\": \"a \xff\xfe dog\"}]", "ill-formed UTF-8");
  fails_with("[{\"image_id\": 1, \"caption\": null}]", "[0].caption: expected a string, got null");
  fails_with(
      "[{\"image_id\": 1, \"caption\": \"a\"}, {\"image_id\": 2, \"caption\": \"b\"}, "
      "{\"image_id\": 1, \"caption\": \"c\"}]",
      "[2].image_id: duplicate image_id 1 (also [0])");
  const auto ok = parse_caption_results(
      "[{\"image_id\": 5, \"caption\": \"a b\", \"score\": 0.5}, {\"image_id\": 3, \"caption\": "
      "\"\"}]",
      "r");
  CHECK(ok == Cands{{3, ""}, {5, "a b"}});
  CHECK_THROWS_AS(imcap::load_caption_results("/nonexistent/results.json"), imcap::IoError);
}

TEST_CASE("results must name images of the annotations that have captions", "[metrics]") {
  const auto annotations = imcap::CocoAnnotations::parse(
      R"({"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
          "annotations": [{"id": 10, "image_id": 1, "caption": "a dog"}]})",
      "ann.json");
  CHECK(imcap::evaluate_results(annotations, {{1, "a dog"}}).corpus.rouge_l == 1.0);
  CHECK_THROWS_WITH(imcap::evaluate_results(annotations, {{1, "a"}, {9, "a"}}),
                    Catch::Contains("image_id 9") && Catch::Contains("ann.json"));
  CHECK_THROWS_WITH(imcap::evaluate_results(annotations, {{2, "a"}}),
                    Catch::Contains("image_id 2") && Catch::Contains("no reference caption"));
  CHECK_THROWS_AS(imcap::evaluate_results(annotations, {}), imcap::InvalidArgument);
}

TEST_CASE("imcap eval prints the scores and writes per-image files", "[metrics][cli]") {
  using imcap::test::run_cli;
  const std::string refs = imcap::test::data_path("fakecap_refs.json");
  const std::string res = imcap::test::data_path("fakecap_results.json");
  const auto annotations = imcap::CocoAnnotations::load(refs);
  const CorpusScores expected =
      imcap::evaluate_results(annotations, imcap::load_caption_results(res));
  imcap::test::TempDir dir;

  const auto j = run_cli({"eval", "--annotations", refs, "--results", res, "--json", "--per-image",
                          dir.file("per_image.csv")});
  INFO(j.err);
  REQUIRE(j.exit_code == 0);
  const json out = json::parse(j.out);  // exactly one JSON object on stdout
  REQUIRE(out.is_object());
  const json want = scores_json(expected.corpus);
  for (const auto& [key, value] : want.items())
    CHECK(out.at(key).get<double>() == value.get<double>());
  CHECK(out.at("images") == 1000);

  const std::string csv = imcap::test::read_text(dir.file("per_image.csv"));
  CHECK(csv.rfind("image_id,Bleu_1,Bleu_2,Bleu_3,Bleu_4,ROUGE_L,CIDEr\n", 0) == 0);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 1001);
  const auto& first = expected.per_image.front();
  CHECK(csv.find("\n" + std::to_string(first.image_id) + ",") != std::string::npos);

  const auto plain = run_cli(
      {"eval", "--annotations", refs, "--results", res, "--per-image", dir.file("per_image.json")});
  REQUIRE(plain.exit_code == 0);
  CHECK_THAT(plain.out, Catch::Contains("Bleu_4") && Catch::Contains("CIDEr") &&
                            Catch::Contains("1000 images"));
  const json per_image = json::parse(imcap::test::read_text(dir.file("per_image.json")));
  REQUIRE(per_image.size() == 1000);
  CHECK(per_image[0].at("image_id") == first.image_id);
  CHECK(per_image[0].at("CIDEr").get<double>() == first.scores.cider);
  CHECK(per_image[0].at("Bleu_4").get<double>() == first.scores.bleu[3]);
}

TEST_CASE("imcap eval exit codes", "[metrics][cli]") {
  using imcap::test::run_cli;
  imcap::test::TempDir dir;
  const std::string refs = imcap::test::data_path("fakecap_refs.json");
  imcap::test::write_text(
      dir.file("dup.json"),
      R"([{"image_id": 404464, "caption": "a"}, {"image_id": 404464, "caption": "b"}])");
  imcap::test::write_text(dir.file("unknown.json"), R"([{"image_id": 12345678, "caption": "a"}])");
  imcap::test::write_text(dir.file("empty.json"), "[]");

  const auto dup = run_cli({"eval", "--annotations", refs, "--results", dir.file("dup.json")});
  CHECK(dup.exit_code == 1);
  CHECK_THAT(dup.err, Catch::Contains("duplicate image_id 404464"));
  const auto unknown =
      run_cli({"eval", "--annotations", refs, "--results", dir.file("unknown.json"), "--json"});
  CHECK(unknown.exit_code == 1);
  CHECK_THAT(unknown.err, Catch::Contains("image_id 12345678"));
  CHECK(unknown.out.empty());
  CHECK(run_cli({"eval", "--annotations", refs, "--results", dir.file("empty.json")}).exit_code ==
        1);
  CHECK(run_cli({"eval", "--annotations", refs}).exit_code == 2);
  CHECK(run_cli({"eval", "--annotations", refs, "--results"}).exit_code == 2);
}

TEST_CASE("CiderD scores each caption as imcap eval's per-image CIDEr-D", "[metrics][coco]") {
  const auto annotations =
      imcap::CocoAnnotations::load(imcap::test::data_path("fakecap_refs.json"));
  const auto results = imcap::load_caption_results(imcap::test::data_path("fakecap_results.json"));
  std::map<std::int64_t, std::vector<std::string>> refs;
  for (const auto& c : annotations.captions())
    if (results.count(c.image_id) > 0) refs[c.image_id].push_back(c.caption);
  const CorpusScores s = imcap::evaluate_captions(refs, results);
  const imcap::CiderD reward(refs);
  CHECK(reward.num_images() == 1000);
  double largest = 0.0;
  for (const auto& image : s.per_image) {
    INFO("image " << image.image_id << ": " << results.at(image.image_id));
    CHECK(reward.score(image.image_id, results.at(image.image_id)) ==
          Approx(image.scores.cider).margin(1e-12));
    largest = std::max(largest, image.scores.cider);
  }
  CHECK(largest > 1.0);  // captions that match something: the comparison can fail
  // A reference scores high, a caption of unknown words 0, and an empty caption 0.
  const std::int64_t first = s.per_image.front().image_id;
  CHECK(reward.score(first, refs.at(first).front()) > 2.0);
  CHECK(reward.score(first, "zyzzyva quokka zyzzyva") == 0.0);
  CHECK(reward.score(first, "") == 0.0);
  CHECK(reward.score_tokens(first, imcap::tokenize_for_eval(results.at(first))) ==
        reward.score(first, results.at(first)));
  // The document frequencies are those of the given references: fewer images, other scores.
  std::map<std::int64_t, std::vector<std::string>> few;
  for (auto it = refs.begin(); few.size() < 20; ++it) few.insert(*it);
  const imcap::CiderD small(few);
  CHECK(small.score(first, results.at(first)) != Approx(reward.score(first, results.at(first))));
  // Scores from several threads at once are the same.
  std::vector<double> serial, parallel(s.per_image.size());
  for (const auto& image : s.per_image)
    serial.push_back(reward.score(image.image_id, results.at(image.image_id)));
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (std::size_t i = t; i < s.per_image.size(); i += 4)
        parallel[i] = reward.score(s.per_image[i].image_id, results.at(s.per_image[i].image_id));
    });
  for (auto& t : threads) t.join();
  CHECK(parallel == serial);
  // Errors name the image.
  CHECK_THROWS_WITH(reward.score(-5, "a dog"), Catch::Contains("image -5"));
  CHECK_THROWS_AS(imcap::CiderD(std::map<std::int64_t, std::vector<std::string>>{}),
                  imcap::InvalidArgument);
  CHECK_THROWS_WITH(imcap::CiderD(std::map<std::int64_t, std::vector<std::string>>{{7, {}}}),
                    Catch::Contains("image 7"));
}
