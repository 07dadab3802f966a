// The pieces of the searches (src/search.cpp) that the CUDA-graph greedy engine and the
// Captioner share: how a token sequence becomes a Hypothesis, and the checks of the options and
// the special tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "imcap/search.hpp"

namespace imcap::detail {

/// length^alpha (length at least 1); 1 for alpha 0.
double length_penalty(std::int64_t length, double alpha);
/// Whether `tokens` begins with <start> (start_id >= 0).
bool starts_with_start(const std::vector<std::int64_t>& tokens, std::int64_t start_id);
/// Words of a partial caption: its tokens less a leading <start>.
std::int64_t word_count(const std::vector<std::int64_t>& tokens, std::int64_t start_id);
/// The hypothesis of generated `tokens` (a leading <start> included, the <end> not) with
/// summed log-probability `log_prob`: <start> stripped, score length-normalised.
Hypothesis make_hypothesis(const std::vector<std::int64_t>& tokens, double log_prob, bool finished,
                           const SearchOptions& options, const SpecialTokens& ids);
/// Throws InvalidArgument, prefixed by `what`, for options out of range.
void check_search_options(const SearchOptions& options, const char* what);
/// Throws InvalidArgument, prefixed by `what`, for a special id that is neither -1 nor below
/// `vocab_size`.
void check_special_tokens(const SpecialTokens& tokens, std::int64_t vocab_size, const char* what);

}  // namespace imcap::detail
