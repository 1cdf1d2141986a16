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

SelfDrafter::SelfDrafter(Transformer& target, float p_min, int64_t vocab_rows, int width, int side)
    : target_(target),
      p_min_(p_min),
      vocab_rows_(vocab_rows),
      width_(std::max(width, 1)),
      side_(std::max(side, 0)) {
  if (const std::string why = self_draft_refusal(target); !why.empty()) fail("{}", why);
}

std::vector<int32_t> SelfDrafter::draft(std::span<const int32_t> context, int max_tokens) {
  DraftTree tree = draft_tree(context, max_tokens, max_tokens);
  tree.tokens.resize(static_cast<size_t>(tree.chain_length()));  // the chain alone
  return tree.tokens;
}

DraftTree SelfDrafter::draft_tree(std::span<const int32_t> context, int max_tokens, int max_total) {
  DraftTree tree;
  const int base = target_.n_past();
  if (base >= static_cast<int>(context.size())) return tree;  // nothing to continue from
  const int room = target_.context_size() - static_cast<int>(context.size());
  max_total = std::min(max_total, room);
  max_tokens = std::min(max_tokens, max_total);
  if (max_tokens <= 0) return tree;
  // Leaves beside the chain: the draft's runners-up at each position it drafts, as
  // (token, parent) with parent -1 for the first position (width - 1 of them) and the chain's
  // token before it at the others (side_ each). They cost no draft pass: the same logits.
  std::vector<std::pair<int32_t, int32_t>> leaves;
  try {
    // The unfed tail of the context (one token in generate()), then each draft in turn.
    std::span<const float> logits = target_.forward_resident(context.subspan(base), vocab_rows_);
    for (;;) {
      const TopToken top = top_token(logits);
      if (top.probability < p_min_) break;
      const int32_t parent = static_cast<int32_t>(tree.tokens.size()) - 1;
      const int others = parent < 0 ? width_ - 1 : side_;
      if (others > 0) {
        for (int32_t t : runners_up(logits, others)) leaves.emplace_back(t, parent);
      }
      tree.parents.push_back(parent);
      tree.tokens.push_back(top.token);
      if (static_cast<int>(tree.tokens.size()) == max_tokens) break;
      logits = target_.forward_resident(std::span(&top.token, 1), vocab_rows_);
    }
  } catch (...) {
    target_.truncate(base);
    throw;
  }
  target_.truncate(base);
  // The shallower leaves first (they are reached more often), as many as fit.
  const int fit = std::min<int>(static_cast<int>(leaves.size()),
                                max_total - static_cast<int>(tree.tokens.size()));
  for (int a = 0; a < fit; ++a) {
    tree.tokens.push_back(leaves[a].first);
    tree.parents.push_back(leaves[a].second);
  }
  return tree;
}

std::vector<int32_t> SelfDrafter::runners_up(std::span<const float> logits, int n) {
  // The n + 1 largest logits, best first; the best is the chain's.
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  const int k = std::min<int>(n + 1, static_cast<int>(ids.size()));
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  return {ids.begin() + 1, ids.begin() + k};
}

}  // namespace flashlm
