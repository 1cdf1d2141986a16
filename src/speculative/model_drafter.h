// Drafts from a second, smaller model of the same family (`-md MODEL.gguf`, llama.cpp's
// speculative decoding): it runs dense from DRAM beside the target, sharing its threads, and
// proposes its own greedy continuation while it is confident of it.
#pragma once

#include <memory>

#include "flash/loaded_model.h"
#include "model/feed_forward.h"
#include "model/transformer.h"
#include "speculative/draft.h"

namespace flashlm {

class ThreadPool;

// Throws unless `draft` and `target` share a vocabulary (the same token strings for the same
// ids), naming both models and the first difference: drafts are token ids, verified by the
// target as its own.
void check_same_vocabulary(const Model& draft, const Model& target);
// `draft` when it can draft for `target`: a GGUF (it runs dense) with the target's vocabulary;
// throws otherwise.
std::unique_ptr<Model> check_draft_model(std::unique_ptr<Model> draft, const Model& target);

// The draft model's KV cache follows the context: each draft() keeps the longest common prefix
// of the tokens it holds and the context, feeds the rest in batches, then drafts greedily,
// stopping before a token whose probability under the draft model is below p_min (llama.cpp's
// --draft-p-min).
//
// Why greedy drafts keep the output exactly plain decoding's, sampled as well as greedy: the
// standard speculative rejection sampling for a draft distribution q and a target distribution
// p accepts a drafted x with probability min(1, p(x) / q(x)) and otherwise samples from
// max(0, p - q) renormalised. A greedy draft is a point mass, q = delta_x, so it accepts x with
// probability p(x) and otherwise samples from p with x removed, renormalised. generate() samples
// y from p (the target's own logits, one draw of the sampler as plain decoding makes) and keeps
// x where y == x: that happens with probability p(x), and when it does not, y is a sample of p
// conditioned on y != x. The two are the same procedure, and since generate() draws exactly
// what plain decoding draws, it also gives the same tokens for the same seed.
class ModelDrafter : public Drafter {
 public:
  // `draft` runs dense (a GGUF file) on `pool`, which the target's engine shares: drafting and
  // verifying take turns, so one pool serves both. `options` are the draft's transformer's
  // (engine.h: draft_transformer_options).
  ModelDrafter(std::unique_ptr<Model> draft, const Model& target, ThreadPool& pool,
               const TransformerOptions& options, float p_min);
  // The transformer refers to the FFN beside it: neither copied nor moved.
  ModelDrafter(const ModelDrafter&) = delete;
  ModelDrafter& operator=(const ModelDrafter&) = delete;

  std::vector<int32_t> draft(std::span<const int32_t> context, int max_tokens) override;
  void prefill(std::span<const int32_t> context) override;
  std::string name() const override;

 private:
  // Makes the KV cache hold `context` and returns the logits after its last token; with
  // `need_logits` false a cache that already holds all of it is left as it is (and the
  // returned span is empty).
  std::span<const float> catch_up(std::span<const int32_t> context, bool need_logits);
  std::span<const float> feed(std::span<const int32_t> tokens);

  std::unique_ptr<Model> model_;
  DenseFeedForward ffn_;
  Transformer transformer_;
  float p_min_;
  int draftable_;                // ids below this are the tokens of both vocabularies
  std::vector<int32_t> cached_;  // the tokens in the KV cache, in order
};

}  // namespace flashlm
