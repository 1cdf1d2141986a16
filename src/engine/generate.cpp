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
      std::vector<int32_t> parents = {-1};  // step[i] follows step[parents[i]]
      int asked = 0, chain = 0;
      double draft_seconds = 0;
      if (drafter) {
        context.push_back(token);
        // The chain stops at the token limit; leaves beside it may use every row of logits
        // the transformer keeps (and of the context).
        const int context_room = transformer.context_size() - transformer.n_past() - 1;
        const int room = std::min({draft_max, max_tokens - stats.generated_tokens - 1, context_room});
        asked = std::min(draft_length.next(), room);
        const auto draft_start = Clock::now();
        const DraftTree guess = drafter->draft_tree(
            context, asked, std::min(transformer.kept_logit_rows() - 1, context_room));
        draft_seconds = seconds_since(draft_start);
        stats.draft_seconds += draft_seconds;
        step.insert(step.end(), guess.tokens.begin(), guess.tokens.end());
        for (int32_t parent : guess.parents) parents.push_back(parent + 1);
        chain = guess.chain_length();
      }
      const bool tree = chain + 1 < static_cast<int>(step.size());
      const int base = transformer.n_past();
      const auto verify_start = Clock::now();
      logits = tree ? transformer.forward_tree(step, parents)
                    : transformer.forward(step, /*all_logits=*/step.size() > 1);
      const double pass_seconds = seconds_since(verify_start);
      stats.verify_seconds += pass_seconds;
      ++stats.decode_passes;
      const int drafted = static_cast<int>(step.size()) - 1;
      stats.drafted_tokens += drafted;
      // Row i holds the logits after step[i] (and its path): sample it, and go on to the draft
      // that follows step[i] with the sample, while there is one. In a chain that is step[i + 1].
      int accepted = 0;
      bool going = true;
      std::vector<int> path = {base};  // the cache rows of the tokens kept
      for (int node = 0;;) {
        token = sampler.sample(logits.subspan(static_cast<size_t>(node) * vocab, vocab));
        int next = node + 1;
        while (next < static_cast<int>(step.size()) &&
               (parents[next] != node || step[next] != token)) {
          ++next;
        }
        if (next == static_cast<int>(step.size())) break;
        ++accepted;
        node = next;
        path.push_back(base + next);
        context.push_back(token);
        if (!emit(token)) {
          going = false;
          break;
        }
      }
      stats.accepted_tokens += accepted;
      draft_length.observe(chain, std::min(accepted, chain), pass_seconds, asked, draft_seconds);
      // The KV cache keeps what plain decoding would have fed: step[0] and the accepted drafts,
      // except one that ended generation (as plain decoding never feeds its last token).
      // `token`, the correction or the bonus, is the next step's first.
      const int keep = going ? 1 + accepted : accepted;
      if (tree) {
        transformer.kv_cache().keep_path(base, std::span(path).first(keep));
      } else if (keep < static_cast<int>(step.size())) {
        transformer.truncate(base + keep);
      }
      if (!going) break;
    }
  }
  stats.decode_seconds = seconds_since(start);
  return stats;
}

}  // namespace flashlm
