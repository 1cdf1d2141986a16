#include "engine/generate.h"

#include <algorithm>
#include <vector>

#include "common/error.h"
#include "common/stopwatch.h"

namespace flashlm {

GenerationStats generate(Transformer& transformer, Sampler& sampler, const Tokenizer& tokenizer,
                         std::span<const int32_t> prompt, int max_tokens,
                         const std::function<bool(int32_t)>& on_token,
                         const std::function<bool()>& cancelled, const DecodeOptions& draft) {
  GenerationStats stats;
  stats.prompt_tokens = static_cast<int>(prompt.size());
  const auto stop = [&] { return cancelled && (stats.cancelled = cancelled()); };
  auto start = Clock::now();
  std::span<const float> logits;
  const size_t batch = static_cast<size_t>(transformer.max_batch());
  for (size_t at = 0; at < prompt.size(); at += batch) {
    if (stop()) return stats;
    logits = transformer.forward(prompt.subspan(at, std::min(batch, prompt.size() - at)));
  }
  Drafter* drafter = draft.drafter;
  // Everything so far, for the drafts to look back on.
  std::vector<int32_t> context;
  if (drafter) {
    context.assign(draft.history.begin(), draft.history.end());
    context.insert(context.end(), prompt.begin(), prompt.end());
    drafter->prefill(context);
  }
  stats.prompt_seconds = seconds_since(start);

  const int draft_max = std::min(draft.max_tokens, transformer.kept_logit_rows() - 1);
  if (drafter && !transformer.keeps_all_logits()) {
    fail("internal error: speculative decoding needs a transformer that keeps all logits");
  }
  if (drafter && draft_max < 1) {
    fail("speculative decoding needs steps of at least 2 tokens (--draft-max {}, -b {})",
         draft.max_tokens, transformer.max_batch());
  }
  const int vocab = transformer.config().vocab_size;
  DraftLength draft_length(draft_max);

  start = Clock::now();
  // Takes a sampled token: false when generation ends with it (end of generation, the caller,
  // the token limit or a full context).
  const auto emit = [&](int32_t token) {
    if (draft.stop_at_end_of_generation && tokenizer.is_end_of_generation(token)) {
      stats.stopped_by_eog = true;
      return false;
    }
    ++stats.generated_tokens;
    if (!on_token(token)) return false;
    if (stats.generated_tokens >= max_tokens) return false;
    return true;
  };
  if (max_tokens > 0 && !logits.empty()) {
    int32_t token = sampler.sample(logits);
    while (emit(token) && transformer.n_past() < transformer.context_size() && !stop()) {
      // `token` is generated but not yet in the KV cache: this step appends it and as many
      // drafted tokens after it as the context and the token limit leave room for.
      std::vector<int32_t> step = {token};
      int asked = 0;
      double draft_seconds = 0;
      if (drafter) {
        context.push_back(token);
        asked = std::min({draft_length.next(), max_tokens - stats.generated_tokens - 1,
                          transformer.context_size() - transformer.n_past() - 1});
        const auto draft_start = Clock::now();
        const std::vector<int32_t> guess = drafter->draft(context, asked);
        draft_seconds = seconds_since(draft_start);
        stats.draft_seconds += draft_seconds;
        step.insert(step.end(), guess.begin(), guess.end());
      }
      const int base = transformer.n_past();
      const auto verify_start = Clock::now();
      logits = transformer.forward(step, /*all_logits=*/step.size() > 1);
      const double pass_seconds = seconds_since(verify_start);
      stats.verify_seconds += pass_seconds;
      ++stats.decode_passes;
      const int drafted = static_cast<int>(step.size()) - 1;
      stats.drafted_tokens += drafted;
      // Row i holds the logits after step[0..i]: sample it, and go on while the sample is the
      // draft's next token.
      int accepted = 0;
      bool going = true;
      for (int i = 0;; ++i) {
        token = sampler.sample(logits.subspan(static_cast<size_t>(i) * vocab, vocab));
        if (i == drafted || token != step[i + 1]) break;
        ++accepted;
        context.push_back(token);
        if (!emit(token)) {
          going = false;
          break;
        }
      }
      stats.accepted_tokens += accepted;
      draft_length.observe(drafted, accepted, pass_seconds, asked, draft_seconds);
      // The KV cache keeps what plain decoding would have fed: step[0] and the accepted drafts,
      // except one that ended generation (as plain decoding never feeds its last token).
      // `token`, the correction or the bonus, is the next step's first.
      const int keep = going ? 1 + accepted : accepted;
      if (keep < static_cast<int>(step.size())) transformer.truncate(base + keep);
      if (!going) break;
    }
  }
  stats.decode_seconds = seconds_since(start);
  return stats;
}

}  // namespace flashlm
