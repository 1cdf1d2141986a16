// Speculative decoding's drafts: guesses of the next tokens that one batched forward pass of
// the target model then verifies, so that a pass over the weights (on flash: one read of every
// layer) can yield several tokens. Verification lives in engine/generate.cpp; a draft only
// proposes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace flashlm {

// Drafted tokens as a tree: tokens[i] follows tokens[parents[i]], or, where parents[i] is -1,
// the token the step starts with (the last one sampled). Parents come first; a chain has
// parents 0, 1, 2, ... after its first token's -1.
struct DraftTree {
  std::vector<int32_t> tokens;
  std::vector<int32_t> parents;
  bool is_chain() const;
  // Tokens of the chain that starts the list (each following the one before): what the
  // draft length counts; the rest are alternatives verified beside it.
  int chain_length() const;
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  // The draft as a tree of at most max_total tokens whose first chain has at most max_tokens;
  // by default draft()'s chain.
  virtual DraftTree draft_tree(std::span<const int32_t> context, int max_tokens, int max_total);
  // Up to max_tokens tokens that may follow `context` (the prompt and everything generated);
  // empty when there is no good guess (the step then decodes one token, as without a draft).
  virtual std::vector<int32_t> draft(std::span<const int32_t> context, int max_tokens) = 0;
  // Takes in `context` (a prompt) ahead of the first draft, so that what that costs a drafter
  // with state (a draft model's KV cache) counts as prompt processing; others ignore it.
  virtual void prefill(std::span<const int32_t> /*context*/) {}
  // What drafts: "ngram", "self", or the draft model's file.
  virtual std::string name() const = 0;
};

// The most likely token of `logits` and its probability under their softmax: what a greedy
// draft proposes, and how sure it is (--draft-p-min).
struct TopToken {
  int32_t token = 0;
  double probability = 0;
};
TopToken top_token(std::span<const float> logits);

// Prompt lookup: the last n tokens of the context (n from max_n down to min_n) are searched for
// earlier in the context, and what followed their latest earlier occurrence is the draft.
// No model and no memory beyond the tokens; it pays where text repeats (code, quotes, edits
// of a given text, summaries that reuse the source's words).
class NgramDrafter : public Drafter {
 public:
  NgramDrafter(int min_n = 2, int max_n = 4);
  std::vector<int32_t> draft(std::span<const int32_t> context, int max_tokens) override;
  std::string name() const override { return "ngram"; }

 private:
  int min_n_, max_n_;
};

// How many tokens to draft next. A verifying pass of s tokens costs about a + b * s (on flash,
// a is the layer reads and b the compute per token), drafting k tokens about c * k (a draft
// model's passes; next to nothing for ngram), and a chain of k drafts yields
// 1 + alpha + ... + alpha^k tokens when each is accepted with probability alpha. All are
// measured as generation goes (a least-squares line through the passes' times, the drafting
// time per token asked for, the acceptance of the drafts actually tried, older steps weighing
// less), and the k in 1..max_tokens with the most tokens per second is chosen: long drafts
// where passes are dear and drafts good and cheap, one token where verifying costs compute
// that rejections waste.
class DraftLength {
 public:
  explicit DraftLength(int max_tokens);
  int next() const;
  // A verifying pass of 1 + drafted tokens, `accepted` of the drafts kept, in `seconds`;
  // drafting took `draft_seconds` for `asked` tokens asked for.
  void observe(int drafted, int accepted, double seconds, int asked = 0,
               double draft_seconds = 0);

 private:
  int max_;
  double tried_ = 2, kept_ = 1;                         // prior: half of the drafts accepted
  double n_ = 0, s_ = 0, ss_ = 0, t_ = 0, st_ = 0;  // sums for the line through (s, seconds)
  double asked_ = 0, draft_seconds_ = 0;             // for c, drafting seconds per token
};

// `--draft SOURCE` as a Drafter: "ngram"; "none" (or empty) gives null. Anything else is an
// error that lists what is supported. A draft model (ModelDrafter, speculative/model_drafter.h)
// is built by the caller, which counts its memory in the target's budget first, and so is
// "self" (SelfDrafter, speculative/self_drafter.h), which needs the target's transformer.
std::unique_ptr<Drafter> make_drafter(const std::string& source);

}  // namespace flashlm
