#include "support/generation.h"

namespace flashlm::testing {

Generated generate_tokens(Engine& engine, std::span<const int32_t> prompt, int n,
                          const SamplingParams& sampling, Drafter* drafter, int draft_max) {
  Transformer& tr = engine.transformer();
  tr.truncate(0);
  Sampler sampler(sampling);
  Generated r;
  r.stats =
      generate(tr, sampler, engine.model().tokenizer, prompt, n,
               [&](int32_t t) { return r.tokens.push_back(t), true; }, {},
               {.drafter = drafter, .max_tokens = draft_max, .stop_at_end_of_generation = false});
  r.n_past = tr.n_past();
  return r;
}

}  // namespace flashlm::testing
