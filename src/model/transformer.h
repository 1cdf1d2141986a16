// The forward pass of a decoder-only transformer (Llama, Qwen2, Gemma 3 families).
//
// Per token: embed, then for each layer
//   h = x + Attention(RMSNorm(x)),   x' = h + FFN(RMSNorm(h))
// and finally logits = W_out RMSNorm(x). The FFN is a FeedForward, so the same pass runs
// dense from DRAM or sparse from flash.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/feed_forward.h"
#include "model/token_embedding.h"
#include "model/weights.h"

namespace flashlm {

class ThreadPool;

struct TransformerOptions {
  int context_size = 2048;  // tokens the KV cache holds
  int max_batch = 64;       // tokens per forward step during prompt processing
  // Where the embedding rows come from; null: the weights' table in DRAM (ResidentEmbedding).
  TokenEmbedding* embedding = nullptr;
};

class Transformer {
 public:
  Transformer(const ModelConfig& config, const ModelWeights& weights, FeedForward& ffn,
              ThreadPool& pool, TransformerOptions options = {});

  // Appends `tokens` at positions n_past().. and returns the logits of the last token
  // (vocab_size floats), or with all_logits those of every token (tokens.size() x vocab_size;
  // then tokens.size() must not exceed max_batch). The span stays valid until the next call.
  std::span<const float> forward(std::span<const int32_t> tokens, bool all_logits = false);

  int n_past() const { return n_past_; }
  int context_size() const { return options_.context_size; }
  int max_batch() const { return options_.max_batch; }
  // Forgets everything from position n on (n = 0 starts over).
  void truncate(int n);
  const ModelConfig& config() const { return config_; }
  size_t kv_cache_bytes() const;

 private:
  void forward_batch(std::span<const int32_t> tokens, bool all_logits);
  void attention(int layer, int64_t n_tokens);

  const ModelConfig& config_;
  const ModelWeights& weights_;
  FeedForward& ffn_;
  ResidentEmbedding resident_embedding_;
  TokenEmbedding& embedding_;
  ThreadPool& pool_;
  TransformerOptions options_;
  int n_past_ = 0;

  std::vector<float> key_cache_, value_cache_;  // [layer][position][kv_dim]
  std::vector<float> x_, xn_, q_, k_, v_, attn_, out_, logits_;
  std::vector<float> scores_;  // [thread][context]
};

}  // namespace flashlm
