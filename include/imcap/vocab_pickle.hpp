// Importing the vocab.pkl that the original PyTorch notebooks write with pickle.dump(vocab, f):
// a `vocabulary.Vocabulary` object holding word2idx, idx2word and idx.
//
//   imcap::Vocabulary vocab = imcap::import_vocab_pickle("vocab.pkl");
//   vocab.save("vocab.txt");
#pragma once

#include <string>

#include "imcap/vocabulary.hpp"

namespace imcap {

/// Reads a pickled vocabulary object (any class whose state holds word2idx and/or idx2word, or a
/// plain dict with those keys) through the restricted unpickler; nothing in it is executed.
/// Ids are kept exactly as in the file (<start>=0, <end>=1, <unk>=2 for the Udacity notebook).
/// Throws FormatError naming the file when idx2word is not 0..n-1, when word2idx is not its
/// inverse, or when a special token is missing; SecurityError when the pickle asks for a
/// dangerous global.
Vocabulary import_vocab_pickle(const std::string& path);

}  // namespace imcap
