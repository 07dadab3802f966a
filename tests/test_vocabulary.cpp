// Tokenizer and Vocabulary.
#include "catch.hpp"

#include <sstream>

#include "imcap/coco_dataset.hpp"
#include "imcap/error.hpp"
#include "imcap/vocabulary.hpp"
#include "support.hpp"

using imcap::tokenize;
using imcap::Vocabulary;
using Tokens = std::vector<std::string>;

TEST_CASE("tokenize splits words from punctuation like NLTK", "[vocabulary]") {
  CHECK(tokenize("A man sitting at a table.") ==
        Tokens{"a", "man", "sitting", "at", "a", "table", "."});
  CHECK(tokenize("The man's dog.") == Tokens{"the", "man", "'s", "dog", "."});
  CHECK(tokenize("It doesn't fit, they're sure!") ==
        Tokens{"it", "does", "n't", "fit", ",", "they", "'re", "sure", "!"});
  CHECK(tokenize("  Two   dogs\n play \t") == Tokens{"two", "dogs", "play"});
  CHECK(tokenize("A t-shirt (red) with 1,000 dots; 10:30 a.m.") ==
        Tokens{"a", "t-shirt", "(", "red", ")", "with", "1,000", "dots", ";", "10:30", "a.m."});
  CHECK(tokenize("the dogs' bowls") == Tokens{"the", "dogs", "'", "bowls"});
  CHECK(tokenize("wait... what?") == Tokens{"wait", "...", "what", "?"});
  CHECK(tokenize("I cannot see \"it\"") == Tokens{"i", "can", "not", "see", "\"", "it", "\""});
  CHECK(tokenize("a 3.5 inch disk") == Tokens{"a", "3.5", "inch", "disk"});
  CHECK(tokenize("a cat, a dog: a bird") == Tokens{"a", "cat", ",", "a", "dog", ":", "a", "bird"});
  CHECK(tokenize("").empty());
  CHECK(tokenize("Café NOIR") == Tokens{"café", "noir"});
}

TEST_CASE("built vocabulary puts specials first, then words by count and alphabet",
          "[vocabulary]") {
  const auto v = Vocabulary::build_from_captions(
      {"a dog runs.", "a cat runs", "A dog sits", "zebra"}, {/*threshold=*/1});
  REQUIRE(v.size() == 4 + 7);
  CHECK(v.token(0) == "<pad>");
  CHECK(v.token(1) == "<start>");
  CHECK(v.token(2) == "<end>");
  CHECK(v.token(3) == "<unk>");
  CHECK(v.pad_id() == 0);
  CHECK(v.start_id() == 1);
  CHECK(v.end_id() == 2);
  CHECK(v.unk_id() == 3);
  // a:3, dog:2, runs:2, then 1 each: '.', cat, sits, zebra (alphabetical)
  const Tokens expected{"<pad>", "<start>", "<end>", "<unk>", "a",    "dog",
                        "runs",  ".",       "cat",   "sits",  "zebra"};
  CHECK(Tokens(v.tokens().begin(), v.tokens().begin() + 11) == expected);
  CHECK(v.count(v.id("a")) == 3);
}

TEST_CASE("threshold and max_size drop rare words", "[vocabulary]") {
  const auto v = Vocabulary::build_from_captions({"a dog", "a cat", "a dog"}, {/*threshold=*/2});
  CHECK(v.size() == 6);
  CHECK(v.contains("a"));
  CHECK(v.contains("dog"));
  CHECK_FALSE(v.contains("cat"));
  CHECK(v.id("cat") == v.unk_id());
  imcap::VocabularyOptions capped;
  capped.threshold = 1;
  capped.max_size = 1;
  CHECK(Vocabulary::build_from_captions({"a dog", "a cat"}, capped).size() == 5);
}

TEST_CASE("encode and decode round trip, with and without specials", "[vocabulary]") {
  const auto v = Vocabulary::build_from_captions({"a dog runs on the grass ."}, {/*threshold=*/1});
  const auto ids = v.encode("A dog runs on the GRASS.");
  REQUIRE(ids.size() == 9);
  CHECK(ids.front() == v.start_id());
  CHECK(ids.back() == v.end_id());
  CHECK(v.decode(ids) == "a dog runs on the grass .");
  CHECK(v.decode(ids, /*keep_specials=*/true) == "<start> a dog runs on the grass . <end>");
  CHECK(v.encode("a zebra", /*add_specials=*/false) ==
        std::vector<std::int64_t>{v.id("a"), v.unk_id()});
  // decoding stops at <end> and skips padding
  CHECK(v.decode({v.start_id(), v.id("dog"), v.end_id(), v.id("grass"), 0}) == "dog");
  CHECK_THROWS_AS(v.token(-1), imcap::InvalidArgument);
  CHECK_THROWS_AS(v.token(static_cast<std::int64_t>(v.size())), imcap::InvalidArgument);
  CHECK_THROWS_WITH(v.decode({1000}), Catch::Contains("id 1000 is out of range"));
}

TEST_CASE("vocabulary file round trip", "[vocabulary]") {
  imcap::test::TempDir tmp;
  const auto v = Vocabulary::build_from_captions({"a dog", "a cat's toy"}, {/*threshold=*/1});
  v.save(tmp.file("vocab.txt"));
  const auto w = Vocabulary::load(tmp.file("vocab.txt"));
  CHECK(w == v);
  CHECK(w.count(w.id("a")) == 2);
  CHECK(w.to_string() == v.to_string());
}

TEST_CASE("loading a broken vocabulary file names the problem", "[vocabulary]") {
  auto read = [](const std::string& text) {
    std::istringstream in(text);
    return Vocabulary::read(in, "v.txt");
  };
  const std::string header = "# imcap vocabulary v1\n";
  CHECK_THROWS_WITH(read(""), Catch::Contains("v.txt: empty file"));
  CHECK_THROWS_WITH(read("hello\t1\n"), Catch::Contains("line 1: expected the header"));
  CHECK_THROWS_WITH(read(header + "<start>\t0\n<end>\t0\n<unk>\t0\n<end>\t0\n"),
                    Catch::Contains("'<end>' appears twice"));
  CHECK_THROWS_WITH(read(header + "<start>\t0\n<end>\t0\n"), Catch::Contains("'<unk>' is missing"));
  CHECK_THROWS_WITH(read(header + "<start>\t0\n<end>\tmany\n"),
                    Catch::Contains("line 3: expected a count"));
  CHECK_THROWS_WITH(read(header + "<start> 0\n"),
                    Catch::Contains("line 2: expected 'token<TAB>count'"));
  CHECK_THROWS_WITH(read(header + "<start>\t0\n<end>\t0\n<unk>\t0\nd\xffg\t3\n"),
                    Catch::StartsWith("v.txt: line 5: ") && Catch::Contains("ill-formed UTF-8"));
  CHECK_THROWS_WITH(Vocabulary::from_tokens({"<start>", "<end>", "<unk>", "\xc3"}),
                    Catch::Contains("token 3: ill-formed UTF-8"));
  CHECK_THROWS_AS(Vocabulary::load("/nonexistent/vocab.txt"), imcap::IoError);
  // <pad> is optional and ids are kept as written (the notebook's vocab.pkl order).
  const auto v = read(header + "<start>\t0\n<end>\t0\n<unk>\t0\ndog\t3\n");
  CHECK_FALSE(v.pad_id().has_value());
  CHECK(v.start_id() == 0);
  CHECK(v.unk_id() == 2);
  CHECK(v.id("dog") == 3);
}

TEST_CASE("vocabulary from the bundled COCO sample", "[vocabulary][coco]") {
  const auto path = imcap::test::data_path("captions_sample.json");
  const auto v = Vocabulary::build({path}, {/*threshold=*/5});
  const auto again = Vocabulary::build({path}, {/*threshold=*/5});
  CHECK(v == again);
  CHECK(v.token(4) == "a");
  CHECK(v.contains("."));
  CHECK(v.size() > 50);
  CHECK(v.size() < 400);
  // every kept word really occurs at least 5 times
  for (std::int64_t i = 4; i < static_cast<std::int64_t>(v.size()); ++i) CHECK(v.count(i) >= 5);
}
