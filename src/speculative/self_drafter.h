// The model drafting for itself (`--draft self`): on flash, the neurons the memory budget keeps
// in DRAM are a smaller model inside the target, free to run: a pass over them reads nothing.
// It drafts greedily with them, as a separate draft model would, but with no weights, KV cache
// or tokenizer of its own (SubSpec's and Draft & Verify's idea: a draft made from the target).
//
// The draft passes append to the target's own KV cache, after the verified context, and the
// drafter truncates them away before the verifying pass, which writes those positions again:
// what the target computes is untouched, so the output stays plain decoding's (the argument
// in model_drafter.h holds for any greedy draft).
#pragma once

#include "model/transformer.h"
#include "speculative/draft.h"

namespace flashlm {

class SelfDrafter : public Drafter {
 public:
  // `target` is the transformer generate() verifies with; its FFN must hold part, not all and
  // not none, of its neurons in DRAM (FeedForward::resident_share() strictly between 0 and 1),
  // else this throws saying which modes can draft for themselves.
  // With vocab_rows > 0 the drafts compute the output head's first vocab_rows rows only, and
  // draft only those token ids (--draft-vocab): the head is most of a draft pass's arithmetic.
  // `width` > 1: a draft tree, the width - 1 runners-up for the first position verified beside
  // the chain of the best one (--draft-width); 1: a chain. `side` > 0: as many runners-up
  // at each later drafted position, as leaves beside the chain (--draft-side).
  SelfDrafter(Transformer& target, float p_min, int64_t vocab_rows = 0, int width = 1,
              int side = 0);

  // `context` continues what the target's KV cache holds (generate() calls it with the
  // verified tokens in the cache and the last sampled one not yet fed).
  std::vector<int32_t> draft(std::span<const int32_t> context, int max_tokens) override;
  DraftTree draft_tree(std::span<const int32_t> context, int max_tokens, int max_total) override;
  std::string name() const override { return "self"; }

 private:
  // The n tokens after the best of `logits`, in order.
  static std::vector<int32_t> runners_up(std::span<const float> logits, int n);

  Transformer& target_;
  float p_min_;
  int64_t vocab_rows_;
  int width_;
  int side_;
};

// Why `target` cannot draft for itself (every neuron in DRAM, or none), or empty when it can.
std::string self_draft_refusal(const Transformer& target);

}  // namespace flashlm
