// Generating with an engine for tests that compare decoding paths (plain, speculative with
// each draft source): the tokens, the run's stats and what the KV cache holds afterwards.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/engine.h"
#include "engine/generate.h"

namespace flashlm::testing {

struct Generated {
  std::vector<int32_t> tokens;
  GenerationStats stats;
  int n_past = 0;  // the engine's KV cache after the run
};

// `n` tokens after `prompt` from a fresh context of the engine's transformer, with `drafter`
// (null: plain decoding) drafting up to `draft_max` tokens a step; end-of-generation tokens do
// not stop it.
Generated generate_tokens(Engine& engine, std::span<const int32_t> prompt, int n,
                          const SamplingParams& sampling, Drafter* drafter, int draft_max = 6);

}  // namespace flashlm::testing
