// The forward pass of a decoder-only transformer (Llama, Qwen2, Gemma 3 families).
//
// Per token: embed, then for each layer
//   h = x + Attention(RMSNorm(x)),   x' = h + FFN(RMSNorm(h))
// and finally logits = W_out RMSNorm(x). The FFN is a FeedForward, so the same pass runs
// dense from DRAM or sparse from flash.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/feed_forward.h"
#include "model/kv_cache.h"
#include "model/token_embedding.h"
#include "model/weight_stream.h"
#include "model/weights.h"
#include "quant/kernels.h"
#include "quant/types.h"

namespace flashlm {

class LoraSet;
class ThreadPool;

struct TransformerOptions {
  int context_size = 2048;  // tokens the KV cache holds
  int max_batch = 64;       // tokens per forward step during prompt processing
  // Where the embedding rows come from; null: the weights' table in DRAM (ResidentEmbedding).
  TokenEmbedding* embedding = nullptr;
  // Where the attention matrices and the output head come from; null: the weights in DRAM.
  WeightStream* weight_stream = nullptr;
  // LoRA adapters added to the attention projections (the FFN applies its own); null: none.
  const LoraSet* lora = nullptr;
  // How the KV cache stores keys and values: F32, F16 (llama.cpp's default: half the memory,
  // the same perplexity) or Q8_0 (about a quarter; needs head_dim a multiple of 32).
  TensorType kv_type_k = TensorType::F16, kv_type_v = TensorType::F16;
  // Keep the logits of every token of a step (max_batch rows), for forward(tokens, true);
  // otherwise one row.
  bool all_logits = false;
  // With all_logits: how many tokens of a step keep theirs (0: max_batch). Speculative
  // decoding verifies at most --draft-max + 1 tokens a step, prompts still go max_batch at once.
  int logit_rows = 0;
  // Sequences one pass may advance together (forward(std::span<const SequenceStep>)), each
  // with its own KV cache and one row of logits: the server's --parallel.
  int sequences = 1;
  int kept_logit_rows() const {
    return !all_logits ? 1 : logit_rows > 0 ? std::min(logit_rows, max_batch) : max_batch;
  }
  int logit_buffer_rows() const { return std::max(kept_logit_rows(), std::max(sequences, 1)); }
};

// One sequence's share of a pass: its next tokens, appended to its own KV cache.
struct SequenceStep {
  KvCache* cache = nullptr;
  std::span<const int32_t> tokens;
};

// "f32", "f16" or "q8_0" (llama.cpp's --cache-type-k/-v names) as the cache's TensorType.
TensorType parse_kv_cache_type(const std::string& name);

class Transformer {
 public:
  Transformer(const ModelConfig& config, const ModelWeights& weights, FeedForward& ffn,
              ThreadPool& pool, TransformerOptions options = {});

  // Appends `tokens` at positions n_past().. and returns the logits of the last token
  // (vocab_size floats), or with all_logits those of every token (tokens.size() x vocab_size;
  // then tokens.size() must not exceed max_batch, and the options must have all_logits). The
  // span stays valid until the next call.
  std::span<const float> forward(std::span<const int32_t> tokens, bool all_logits = false);
  // Several sequences in one pass (every layer's weights, on flash one read, serve them all):
  // each step's tokens go to its own cache (capacity at most context_size()), and the result
  // holds the logits of each step's last token, one row per step in order. At most
  // `sequences` steps and max_batch tokens in all. A token's logits are exactly what a pass
  // of its sequence alone gives: every row of the batch is computed on its own.
  std::span<const float> forward(std::span<const SequenceStep> steps);
  // A tree of tokens in one pass on the transformer's own cache (speculative decoding's draft
  // trees): token 0 continues the cache, token i > 0 follows token parents[i] < i, and each
  // attends to the cache and its own path through the tree, at the position of its depth. Its
  // keys and values go to rows n_past() + i; the caller keeps the accepted path with
  // KvCache::keep_path. Returns every token's logits (all_logits, at most kept_logit_rows()),
  // each what a pass of its path alone computes.
  std::span<const float> forward_tree(std::span<const int32_t> tokens,
                                      std::span<const int32_t> parents);
  // As forward(tokens) (the logits of the last token), with the FFN computing only what it
  // holds in DRAM (FfnStep::resident_only): on flash a pass that reads nothing, whose logits
  // guess forward()'s, so that the model can draft for itself (speculative/self_drafter.h).
  // The KV entries it appends are the guess's too: truncate them before a real pass. With
  // vocab_rows > 0 the output head computes only the logits of token ids below it (a draft's
  // vocabulary: BPE vocabularies put their most frequent tokens first), and the span holds
  // that many; a head that streams from flash computes them all.
  std::span<const float> forward_resident(std::span<const int32_t> tokens,
                                          int64_t vocab_rows = 0);
  // As forward(), without the output head: the final normalized hidden states of every token
  // (tokens.size() x d_model, at most max_batch tokens), for a loss that applies the head in
  // tiles of the vocabulary (loss/cross_entropy.h). Valid until the next call.
  std::span<const float> forward_hidden(std::span<const int32_t> tokens);
  // The output head, when it is in DRAM (null when it streams from flash).
  const Matrix* output_head() const;
  ThreadPool& pool() const { return pool_; }

  // The transformer's own cache, which forward(tokens) appends to.
  KvCache& kv_cache() { return cache_; }
  int n_past() const { return cache_.size(); }
  int context_size() const { return options_.context_size; }
  int max_batch() const { return options_.max_batch; }
  bool keeps_all_logits() const { return options_.all_logits; }
  int kept_logit_rows() const { return options_.kept_logit_rows(); }
  int max_sequences() const { return std::max(options_.sequences, 1); }
  // Forgets everything from position n on in the transformer's own cache (n = 0 starts over).
  void truncate(int n) { cache_.truncate(n); }
  const ModelConfig& config() const { return config_; }
  const FeedForward& feed_forward() const { return ffn_; }
  size_t kv_cache_bytes() const { return cache_.bytes(); }
  // What a Transformer with these options will allocate, for the memory plan: its KV cache, and
  // every other buffer it holds (activations, logits, attention scratch of `threads` workers).
  static uint64_t kv_cache_bytes(const ModelConfig& config, int context_size, TensorType k,
                                 TensorType v) {
    return KvCache::bytes(config, context_size, k, v);
  }
  static uint64_t scratch_bytes(const ModelConfig& config, const TransformerOptions& options,
                                int threads);

 private:
  void check_tokens(const KvCache& cache, std::span<const int32_t> tokens) const;
  // Lays out a pass: the tokens of `steps` one after another in tokens_, each with its cache
  // and position. Returns the token count.
  int64_t gather(std::span<const SequenceStep> steps);
  // The layers over the n gathered tokens; then the output head over the rows `logit_rows`
  // (token indices), unless `hidden_only`. Every cache advances by its tokens.
  // What kind of pass: the hidden states only (no head), the FFN's resident part only
  // (forward_resident), the head's first vocab_rows rows only (0: all).
  struct Pass {
    bool hidden_only = false;
    bool resident_only = false;
    int64_t vocab_rows = 0;
  };
  void forward_batch(int64_t n, std::span<const int64_t> logit_rows, const Pass& pass);
  void attention(int layer, const LayerWeights& w, int64_t n_tokens);
  // The single-sequence pass over `tokens` on the transformer's own cache, max_batch at a time.
  void forward_own(std::span<const int32_t> tokens, bool all_logits, const Pass& pass);

  const ModelConfig& config_;
  const ModelWeights& weights_;
  FeedForward& ffn_;
  ResidentEmbedding resident_embedding_;
  TokenEmbedding& embedding_;
  ThreadPool& pool_;
  TransformerOptions options_;
  KvCache cache_;
  uint64_t passes_ = 0;  // forward passes so far: the FFN's clock (FfnStep::pass)
  int64_t last_vocab_rows_ = 0;  // logits per row of the last pass

  // The pass being computed: token i is tokens_[i] of the sequence whose cache is
  // token_cache_[i], at position token_pos_[i].
  std::vector<int32_t> tokens_;
  std::vector<KvCache*> token_cache_;
  std::vector<int64_t> token_pos_;
  std::vector<int64_t> token_slot_;  // its row in the cache: token_pos_, except in a tree
  // A tree pass (forward_tree): the cache's size before it (-1: not a tree), and each token's
  // rows for the positions from there to its own.
  int64_t tree_base_ = -1;
  std::vector<std::vector<int64_t>> tree_paths_;
  std::vector<int64_t> logit_rows_;
  std::vector<float> x_, xn_, q_, k_, v_, attn_, out_, logits_;
  std::vector<float> scores_;           // [thread][context]
  std::vector<PreparedInput> queries_;  // [thread]: the query head, prepared for the keys' type
};

}  // namespace flashlm
