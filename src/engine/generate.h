// The generation loop shared by `run`, `chat`, `serve` and `bench`: process the prompt in
// batches, then sample one token at a time until a stop condition; with a draft source, each
// step verifies the drafted tokens plus one in one batched forward pass (speculative decoding).
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "model/transformer.h"
#include "sampling/sampler.h"
#include "speculative/draft.h"
#include "tokenizer/tokenizer.h"

namespace flashlm {

struct GenerationStats {
  int prompt_tokens = 0;
  int generated_tokens = 0;
  double prompt_seconds = 0;
  double decode_seconds = 0;
  bool stopped_by_eog = false;  // the model emitted an end-of-generation token
  bool cancelled = false;       // `cancelled` said so, during the prompt or between tokens
  // Speculative decoding: target forward passes after the prompt, drafted tokens, and how many
  // of them the target accepted; time spent drafting and in the verifying passes.
  int decode_passes = 0;
  int drafted_tokens = 0;
  int accepted_tokens = 0;
  double draft_seconds = 0;
  double verify_seconds = 0;
  double prompt_tokens_per_second() const {
    return prompt_seconds > 0 ? prompt_tokens / prompt_seconds : 0;
  }
  double decode_tokens_per_second() const {
    return decode_seconds > 0 ? generated_tokens / decode_seconds : 0;
  }
  // Generated tokens per target forward pass (1 without drafts; the first token comes from
  // the prompt's pass).
  double tokens_per_pass() const {
    return decode_passes > 0 ? static_cast<double>(generated_tokens - 1) / decode_passes : 0;
  }
  double draft_acceptance() const {
    return drafted_tokens > 0 ? static_cast<double>(accepted_tokens) / drafted_tokens : 0;
  }
};

struct DecodeOptions {
  Drafter* drafter = nullptr;  // null: plain decoding
  int max_tokens = 8;          // drafted tokens per step at most (--draft-max)
  // The tokens the transformer's KV cache holds before the prompt (a session reusing its cache,
  // bench's prompt): drafts look back on them too.
  std::span<const int32_t> history;
  // Off for benchmarks, which generate a fixed number of tokens whatever they are.
  bool stop_at_end_of_generation = true;
};

// Appends `prompt` to the transformer's context, then generates up to max_tokens tokens.
// on_token is called with each generated token (end-of-generation tokens excluded) and
// returns false to stop early. `cancelled`, where given, is asked before each step (a batch
// of the prompt, or one decoding step), so that a long prompt can be abandoned within one
// batch; the context then holds the part of the prompt processed so far (transformer.n_past()).
//
// With a drafter, the transformer must keep every token's logits (all_logits) and take batches
// of max_tokens + 1. The output is token for token what plain decoding gives with the same
// sampler and seed: a batched pass computes exactly what single-token passes compute, each
// position's token is sampled from the target's own logits (one draw per generated token, as
// without drafts), and a draft token counts only where it equals that sample, after which the
// rejected rest is rolled back out of the KV cache.
GenerationStats generate(Transformer& transformer, Sampler& sampler, const Tokenizer& tokenizer,
                         std::span<const int32_t> prompt, int max_tokens,
                         const std::function<bool(int32_t)>& on_token,
                         const std::function<bool()>& cancelled = {},
                         const DecodeOptions& draft = {});

}  // namespace flashlm
