// The generation loop shared by `run`, `chat` and `serve`: process the prompt in batches,
// then sample one token at a time until a stop condition.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "model/transformer.h"
#include "sampling/sampler.h"
#include "tokenizer/tokenizer.h"

namespace flashlm {

struct GenerationStats {
  int prompt_tokens = 0;
  int generated_tokens = 0;
  double prompt_seconds = 0;
  double decode_seconds = 0;
  bool stopped_by_eog = false;  // the model emitted an end-of-generation token
  bool cancelled = false;       // `cancelled` said so, during the prompt or between tokens
  double prompt_tokens_per_second() const {
    return prompt_seconds > 0 ? prompt_tokens / prompt_seconds : 0;
  }
  double decode_tokens_per_second() const {
    return decode_seconds > 0 ? generated_tokens / decode_seconds : 0;
  }
};

// Appends `prompt` to the transformer's context, then generates up to max_tokens tokens.
// on_token is called with each generated token (end-of-generation tokens excluded) and
// returns false to stop early. `cancelled`, where given, is asked before each step (a batch
// of the prompt, or one token), so that a long prompt can be abandoned within one batch; the
// context then holds the part of the prompt processed so far (transformer.n_past()).
GenerationStats generate(Transformer& transformer, Sampler& sampler, const Tokenizer& tokenizer,
                         std::span<const int32_t> prompt, int max_tokens,
                         const std::function<bool(int32_t)>& on_token,
                         const std::function<bool()>& cancelled = {});

}  // namespace flashlm
