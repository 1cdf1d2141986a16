#include "speculative/self_drafter.h"

#include <algorithm>

#include "common/error.h"

namespace flashlm {

std::string self_draft_refusal(const Transformer& target) {
  const double share = target.feed_forward().resident_share();
  if (share >= 1.0) {
    return (
        "--draft self: every FFN neuron is in DRAM (dense mode, or a budget that holds the "
        "whole model), so drafting with them costs as much as the pass it would save; use "
        "--draft self with a .flm model under a --mem-budget that leaves part of it on flash, "
        "or another draft source");
  }
  if (share <= 0.0) {
    return (
        "--draft self needs part of the FFN's neurons in DRAM, and this plan keeps none "
        "(naive or mmap mode, planned sparse reads, or a budget with no room left for "
        "them): use the sparse mode with streamed reads (the default under a budget) or "
        "hybrid, with a budget that leaves room for resident neurons, or another draft "
        "source");
  }
  return {};
}

SelfDrafter::SelfDrafter(Transformer& target, float p_min, int64_t vocab_rows)
    : target_(target), p_min_(p_min), vocab_rows_(vocab_rows) {
  if (const std::string why = self_draft_refusal(target); !why.empty()) fail("{}", why);
}

std::vector<int32_t> SelfDrafter::draft(std::span<const int32_t> context, int max_tokens) {
  std::vector<int32_t> out;
  const int base = target_.n_past();
  if (base >= static_cast<int>(context.size())) return out;  // nothing to continue from
  max_tokens = std::min(max_tokens, target_.context_size() - static_cast<int>(context.size()));
  if (max_tokens <= 0) return out;
  try {
    // The unfed tail of the context (one token in generate()), then each draft in turn.
    std::span<const float> logits = target_.forward_resident(context.subspan(base), vocab_rows_);
    for (;;) {
      const TopToken top = top_token(logits);
      if (top.probability < p_min_) break;
      out.push_back(top.token);
      if (static_cast<int>(out.size()) == max_tokens) break;
      logits = target_.forward_resident(std::span(&top.token, 1), vocab_rows_);
    }
  } catch (...) {
    target_.truncate(base);
    throw;
  }
  target_.truncate(base);
  return out;
}

}  // namespace flashlm
