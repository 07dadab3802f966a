// Importing the notebooks' pickled Vocabulary objects (import_vocab_pickle, imcap/import.hpp).

#include <fmt/format.h>

#include "detail/io.hpp"
#include "detail/pickle.hpp"
#include "imcap/error.hpp"
#include "imcap/import.hpp"

namespace imcap {

namespace {

// vocab.pkl files of COCO-sized vocabularies are about 0.5 MB.
constexpr std::uint64_t kMaxVocabPickleBytes = std::uint64_t{1} << 30;

}  // namespace

Vocabulary import_vocab_pickle(const std::string& path) {
  using detail::PickleValue;
  using Kind = PickleValue::Kind;
  detail::UnpickleOptions options;
  options.allow_objects = true;
  const auto root = detail::unpickle(detail::read_file(path, kMaxVocabPickleBytes), options, path);
  const auto fail = [&](const std::string& why) {
    throw FormatError(fmt::format("{}: {}", path, why));
  };
  if (root->kind != Kind::kObject && root->kind != Kind::kDict)
    fail(fmt::format("expected a pickled vocabulary object, found a {}", root->type_name()));
  const PickleValue* word2idx = root->get("word2idx");
  const PickleValue* idx2word = root->get("idx2word");
  if (!word2idx && !idx2word)
    fail(fmt::format("the {} has neither word2idx nor idx2word", root->type_name()));

  std::vector<std::string> tokens;
  std::vector<bool> seen;
  const auto place = [&](std::int64_t id, const std::string& word, const char* where) {
    if (id < 0) fail(fmt::format("{}: negative id {} for '{}'", where, id, word));
    const auto n =
        static_cast<std::size_t>((word2idx ? word2idx->entries.size() : idx2word->entries.size()));
    if (static_cast<std::uint64_t>(id) >= n)
      fail(
          fmt::format("{}: id {} of '{}' is not below the number of words {}: ids must be "
                      "0..{}",
                      where, id, word, n, n - 1));
    if (seen[static_cast<std::size_t>(id)]) fail(fmt::format("{}: id {} is used twice", where, id));
    seen[static_cast<std::size_t>(id)] = true;
    tokens[static_cast<std::size_t>(id)] = word;
  };

  if (idx2word) {
    if (idx2word->kind != Kind::kDict) fail("idx2word is a " + idx2word->type_name());
    tokens.assign(idx2word->entries.size(), {});
    seen.assign(idx2word->entries.size(), false);
    if (word2idx && word2idx->kind == Kind::kDict &&
        word2idx->entries.size() != idx2word->entries.size())
      fail(fmt::format("word2idx has {} words but idx2word has {}", word2idx->entries.size(),
                       idx2word->entries.size()));
    for (const auto& [k, v] : idx2word->entries) {
      if (k->kind != Kind::kInt || v->kind != Kind::kString)
        fail("idx2word maps a " + k->type_name() + " to a " + v->type_name() +
             " (expected int -> str)");
      place(k->integer, v->text, "idx2word");
    }
  }
  if (word2idx) {
    if (word2idx->kind != Kind::kDict) fail("word2idx is a " + word2idx->type_name());
    const bool check_only = idx2word != nullptr;
    if (!check_only) {
      tokens.assign(word2idx->entries.size(), {});
      seen.assign(word2idx->entries.size(), false);
    }
    for (const auto& [k, v] : word2idx->entries) {
      if (k->kind != Kind::kString || v->kind != Kind::kInt)
        fail("word2idx maps a " + k->type_name() + " to a " + v->type_name() +
             " (expected str -> int)");
      if (check_only) {
        const auto id = v->integer;
        if (id < 0 || static_cast<std::uint64_t>(id) >= tokens.size() ||
            tokens[static_cast<std::size_t>(id)] != k->text)
          fail(fmt::format("word2idx['{}'] = {} but idx2word has '{}' there", k->text, id,
                           id >= 0 && static_cast<std::uint64_t>(id) < tokens.size()
                               ? tokens[static_cast<std::size_t>(id)]
                               : std::string("nothing")));
      } else {
        place(v->integer, k->text, "word2idx");
      }
    }
  }
  if (const PickleValue* idx = root->get("idx");
      idx && idx->kind == Kind::kInt && static_cast<std::uint64_t>(idx->integer) != tokens.size())
    fail(fmt::format("idx is {} but the vocabulary has {} words", idx->integer, tokens.size()));
  try {
    return Vocabulary::from_tokens(std::move(tokens));
  } catch (const InvalidArgument& e) {
    throw FormatError(fmt::format("{}: {}", path, e.what()));
  }
}

}  // namespace imcap
