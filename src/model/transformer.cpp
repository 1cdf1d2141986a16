#include "model/transformer.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/thread_pool.h"
#include "ops/ops.h"
#include "quant/kernels.h"

namespace flashlm {

Transformer::Transformer(const ModelConfig& config, const ModelWeights& weights,
                         FeedForward& ffn, ThreadPool& pool, TransformerOptions options)
    : config_(config),
      weights_(weights),
      ffn_(ffn),
      resident_embedding_(weights.token_embedding),
      embedding_(options.embedding ? *options.embedding : resident_embedding_),
      pool_(pool),
      options_(options) {
  if (options_.context_size <= 0 || options_.max_batch <= 0) {
    fail("context size and batch size must be positive (got {} and {})", options_.context_size,
         options_.max_batch);
  }
  const size_t cache = static_cast<size_t>(config.n_layers) * options_.context_size *
                       config.kv_dim();
  key_cache_.resize(cache);
  value_cache_.resize(cache);
  const size_t b = options_.max_batch;
  x_.resize(b * config.d_model);
  xn_.resize(b * config.d_model);
  out_.resize(b * config.d_model);
  q_.resize(b * config.q_dim());
  attn_.resize(b * config.q_dim());
  k_.resize(b * config.kv_dim());
  v_.resize(b * config.kv_dim());
  logits_.resize(b * config.vocab_size);
  scores_.resize(static_cast<size_t>(pool.size()) * options_.context_size);
}

size_t Transformer::kv_cache_bytes() const {
  return (key_cache_.size() + value_cache_.size()) * sizeof(float);
}

void Transformer::truncate(int n) { n_past_ = std::clamp(n, 0, n_past_); }

std::span<const float> Transformer::forward(std::span<const int32_t> tokens, bool all_logits) {
  if (tokens.empty()) fail("forward() needs at least one token");
  if (n_past_ + static_cast<int64_t>(tokens.size()) > options_.context_size) {
    fail("the context is full: {} tokens already, {} more would exceed the context size {}; "
         "use a larger --ctx-size or a shorter prompt",
         n_past_, tokens.size(), options_.context_size);
  }
  if (all_logits && static_cast<int64_t>(tokens.size()) > options_.max_batch) {
    fail("all logits were asked for {} tokens, more than the batch size {}", tokens.size(),
         options_.max_batch);
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= config_.vocab_size) {
      fail("token id {} is outside the vocabulary (0..{})", t, config_.vocab_size - 1);
    }
  }
  for (size_t start = 0; start < tokens.size(); start += options_.max_batch) {
    const size_t n = std::min<size_t>(options_.max_batch, tokens.size() - start);
    forward_batch(tokens.subspan(start, n), all_logits);
  }
  const size_t vocab = config_.vocab_size;
  if (all_logits) return {logits_.data(), tokens.size() * vocab};
  return {logits_.data(), vocab};
}

void Transformer::forward_batch(std::span<const int32_t> tokens, bool all_logits) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t d = c.d_model;

  // x = embedding of each token (scaled by sqrt(d_model) in Gemma).
  const float embed_scale = c.scale_embeddings ? std::sqrt(static_cast<float>(d)) : 1.0f;
  embedding_.rows(tokens, x_.data());
  if (embed_scale != 1.0f) scale_f32(x_.data(), embed_scale, n * d);

  for (int layer = 0; layer < c.n_layers; ++layer) {
    const LayerWeights& w = weights_.layers[layer];
    // x += Attention(RMSNorm(x))
    rms_norm(x_.data(), w.attn_norm.data, xn_.data(), n, d, c.rms_eps);
    attention(layer, n);
    if (w.post_attn_norm) rms_norm(out_.data(), w.post_attn_norm.data, out_.data(), n, d, c.rms_eps);
    for (int64_t i = 0; i < n * d; ++i) x_[i] += out_[i];
    // x += FFN(RMSNorm(x))
    rms_norm(x_.data(), w.ffn_norm.data, xn_.data(), n, d, c.rms_eps);
    ffn_.forward(layer, xn_.data(), n, out_.data());
    if (w.post_ffn_norm) rms_norm(out_.data(), w.post_ffn_norm.data, out_.data(), n, d, c.rms_eps);
    for (int64_t i = 0; i < n * d; ++i) x_[i] += out_[i];
  }

  // logits = W_out RMSNorm(x), for the last token only unless all are wanted.
  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t rows = n - first;
  rms_norm(x_.data() + first * d, weights_.output_norm.data, xn_.data(), rows, d, c.rms_eps);
  linear(weights_.output, xn_.data(), rows, logits_.data(), pool_);
  n_past_ += static_cast<int>(n);
}

// Grouped-query attention for the n tokens at positions n_past_.. of one layer, reading xn_
// and writing out_ (n x d_model). Keys and values are appended to the cache first, so each
// token attends to everything before it and to itself (causal).
void Transformer::attention(int layer, int64_t n) {
  const ModelConfig& c = config_;
  const LayerWeights& w = weights_.layers[layer];
  const int hd = c.head_dim;
  linear(w.wq, xn_.data(), n, q_.data(), pool_, w.bq);
  linear(w.wk, xn_.data(), n, k_.data(), pool_, w.bk);
  linear(w.wv, xn_.data(), n, v_.data(), pool_, w.bv);

  const bool local = c.is_local_layer(layer);
  const float rope_base = local ? c.rope_base_local : c.rope_base;
  const float rope_scale = local ? 1.0f : c.rope_scale;
  const size_t layer_offset = static_cast<size_t>(layer) * options_.context_size * c.kv_dim();
  float* key_cache = key_cache_.data() + layer_offset;
  float* value_cache = value_cache_.data() + layer_offset;
  for (int64_t t = 0; t < n; ++t) {
    float* q = q_.data() + t * c.q_dim();
    float* k = k_.data() + t * c.kv_dim();
    if (w.q_norm) rms_norm(q, w.q_norm.data, q, c.n_heads, hd, c.rms_eps);
    if (w.k_norm) rms_norm(k, w.k_norm.data, k, c.n_kv_heads, hd, c.rms_eps);
    const int64_t pos = n_past_ + t;
    apply_rope(q, c.n_heads, hd, c.rope_dims, c.rope_style, pos, rope_base, rope_scale);
    apply_rope(k, c.n_kv_heads, hd, c.rope_dims, c.rope_style, pos, rope_base, rope_scale);
    std::copy_n(k, c.kv_dim(), key_cache + pos * c.kv_dim());
    std::copy_n(v_.data() + t * c.kv_dim(), c.kv_dim(), value_cache + pos * c.kv_dim());
  }

  const int group = c.n_heads / c.n_kv_heads;
  pool_.parallel_for(n * c.n_heads, [&](int64_t begin, int64_t end, int thread) {
    float* scores = scores_.data() + static_cast<size_t>(thread) * options_.context_size;
    for (int64_t job = begin; job < end; ++job) {
      const int64_t t = job / c.n_heads;
      const int h = static_cast<int>(job % c.n_heads);
      const int kv_head = h / group;
      const int64_t pos = n_past_ + t;
      const int64_t start = local ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
      const float* q = q_.data() + t * c.q_dim() + h * hd;
      for (int64_t p = start; p <= pos; ++p) {
        scores[p - start] =
            dot_f32(q, key_cache + p * c.kv_dim() + kv_head * hd, hd) * c.attention_scale;
      }
      softmax(scores, pos - start + 1);
      float* o = attn_.data() + t * c.q_dim() + h * hd;
      std::fill_n(o, hd, 0.0f);
      for (int64_t p = start; p <= pos; ++p) {
        axpy_f32(scores[p - start], value_cache + p * c.kv_dim() + kv_head * hd, o, hd);
      }
    }
  });
  linear(w.wo, attn_.data(), n, out_.data(), pool_);
}

}  // namespace flashlm
