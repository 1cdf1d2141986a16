#include "engine/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "common/error.h"
#include "loss/cross_entropy.h"

namespace flashlm {
namespace {

// log p(target) under softmax(logits), in double for a stable sum over a large vocabulary.
double log_probability(std::span<const float> logits, int32_t target) {
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - max));
  return static_cast<double>(logits[target] - max) - std::log(sum);
}

}  // namespace

PerplexityResult evaluate_perplexity(Transformer& transformer, const Tokenizer& tokenizer,
                                     std::string_view text, int chunk_size, int max_chunks,
                                     const std::function<void(int, int, double)>& progress) {
  const bool add_bos = tokenizer.add_bos();
  const std::vector<int32_t> tokens = tokenizer.encode(text, add_bos, false);
  if (chunk_size < 4 || chunk_size > transformer.context_size()) {
    fail("chunk size {} must be between 4 and the context size {}", chunk_size,
         transformer.context_size());
  }
  int chunks = static_cast<int>(tokens.size() / chunk_size);
  if (chunks == 0) {
    fail("the text has {} tokens, fewer than one chunk of {}; use a longer text or a smaller "
         "--ctx-size",
         tokens.size(), chunk_size);
  }
  if (max_chunks > 0) chunks = std::min(chunks, max_chunks);

  const int vocab = transformer.config().vocab_size;
  const int first_scored = chunk_size / 2;
  PerplexityResult result;
  double nll = 0, nll_squares = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int c = 0; c < chunks; ++c) {
    std::vector<int32_t> chunk(tokens.begin() + static_cast<int64_t>(c) * chunk_size,
                               tokens.begin() + static_cast<int64_t>(c + 1) * chunk_size);
    if (add_bos) chunk[0] = tokenizer.bos_id();
    transformer.truncate(0);
    // Position j's logits predict the token at j + 1 of the original sequence.
    const int batch = std::min(chunk_size, transformer.max_batch());
    for (int b = 0; b < chunk_size; b += batch) {
      const int n = std::min(batch, chunk_size - b);
      if (const Matrix* head = transformer.output_head()) {
        // The head in DRAM: the tiled loss, in vocabulary tiles, without a batch of logits.
        const std::span<const float> hidden =
            transformer.forward_hidden(std::span<const int32_t>(chunk).subspan(b, n));
        const int lo = std::max(b, first_scored), hi = std::min(b + n, chunk_size - 1);
        if (lo >= hi) continue;
        std::vector<int32_t> targets(tokens.begin() + static_cast<int64_t>(c) * chunk_size + lo + 1,
                                     tokens.begin() + static_cast<int64_t>(c) * chunk_size + hi + 1);
        std::vector<float> token_nll(targets.size()), lse(targets.size());
        tiled_cross_entropy(*head, hidden.data() + static_cast<size_t>(lo - b) * head->cols,
                            hi - lo, targets.data(), token_nll.data(), lse.data(),
                            transformer.pool());
        for (const float x : token_nll) {
          nll += x;
          nll_squares += double{x} * x;
          ++result.scored_tokens;
        }
        continue;
      }
      std::span<const float> logits =
          transformer.forward(std::span<const int32_t>(chunk).subspan(b, n), true);
      for (int i = 0; i < n; ++i) {
        const int j = b + i;
        if (j < first_scored || j + 1 >= chunk_size) continue;
        const int32_t target = tokens[static_cast<int64_t>(c) * chunk_size + j + 1];
        const double lp = log_probability(logits.subspan(static_cast<size_t>(i) * vocab, vocab),
                                          target);
        nll -= lp;
        nll_squares += lp * lp;
        ++result.scored_tokens;
      }
    }
    result.chunks = c + 1;
    if (progress) progress(c + 1, chunks, std::exp(nll / result.scored_tokens));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double mean = nll / result.scored_tokens;
  const double variance = std::max(0.0, nll_squares / result.scored_tokens - mean * mean);
  result.perplexity = std::exp(mean);
  // Delta method: d exp(m) = exp(m) dm, with the standard error of the mean NLL.
  result.perplexity_stderr =
      result.perplexity * std::sqrt(variance / std::max<int64_t>(1, result.scored_tokens - 1));
  result.tokens_per_second = static_cast<double>(chunks) * chunk_size / seconds;
  return result;
}

}  // namespace flashlm
