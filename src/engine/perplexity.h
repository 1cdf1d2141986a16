// Perplexity as llama.cpp's llama-perplexity measures it, so the figures compare directly.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

#include "model/transformer.h"
#include "tokenizer/tokenizer.h"

namespace flashlm {

struct PerplexityResult {
  double perplexity = 0;
  double perplexity_stderr = 0;
  int64_t scored_tokens = 0;
  int chunks = 0;
  double tokens_per_second = 0;  // tokens evaluated (not only scored) per second
};

// Splits the tokenized text into chunks of chunk_size tokens (the first token of each chunk
// replaced by BOS when the model adds one), evaluates each from an empty context, and scores
// the next-token log-likelihood over the second half of each chunk. With the output head in
// DRAM the log-likelihoods come from the tiled loss (loss/cross_entropy.h: vocabulary tiles,
// no batch x vocabulary logits); with a head streamed from flash, from one batch of logits at
// a time.
PerplexityResult evaluate_perplexity(Transformer& transformer, const Tokenizer& tokenizer,
                                     std::string_view text, int chunk_size, int max_chunks,
                                     const std::function<void(int, int, double)>& progress);

}  // namespace flashlm
