#include "model/transformer.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/thread_pool.h"
#include "lora/lora.h"
#include "ops/ops.h"
#include "quant/kernels.h"

namespace flashlm {
namespace {

// The cache stores each head's slice of a row as whole blocks of its type, so that a head's
// keys and values are rows of their own for the kernels.
void check_kv_cache_type(const ModelConfig& c, TensorType type, const char* what,
                         const char* flag) {
  if (type != TensorType::F32 && type != TensorType::F16 && type != TensorType::Q8_0) {
    fail("the KV cache cannot store {} as {}; {} takes f32, f16 or q8_0", what, type_name(type),
         flag);
  }
  const int64_t block = type_traits(type).block_size;
  if (c.head_dim % block != 0) {
    fail("a {} KV cache stores {} in blocks of {} values, and this model's head_dim {} is not a "
         "multiple of {}; use {} f16",
         type_name(type), what, block, c.head_dim, block, flag);
  }
}

}  // namespace

TensorType parse_kv_cache_type(const std::string& name) {
  if (name == "f32") return TensorType::F32;
  if (name == "f16") return TensorType::F16;
  if (name == "q8_0") return TensorType::Q8_0;
  fail("unknown KV cache type '{}': the choices are f32, f16 and q8_0", name);
}

uint64_t Transformer::kv_cache_bytes(const ModelConfig& c, int context_size, TensorType k,
                                     TensorType v) {
  check_kv_cache_type(c, k, "keys", "--cache-type-k");
  check_kv_cache_type(c, v, "values", "--cache-type-v");
  const uint64_t rows = static_cast<uint64_t>(c.n_layers) * std::max(context_size, 0);
  return rows * (row_bytes(k, c.kv_dim()) + row_bytes(v, c.kv_dim()));
}

uint64_t Transformer::scratch_bytes(const ModelConfig& c, const TransformerOptions& options,
                                    int threads) {
  const uint64_t batch = std::max(options.max_batch, 0);
  const uint64_t logit_rows = static_cast<uint64_t>(std::max(options.kept_logit_rows(), 1));
  const uint64_t workers = std::max(threads, 1);
  const uint64_t floats = batch * (3 * c.d_model + 2 * c.q_dim() + 2 * c.kv_dim()) +
                          logit_rows * c.vocab_size +
                          workers * std::max(options.context_size, 0);
  return floats * sizeof(float) + workers * PreparedInput::bytes(options.kv_type_k, c.head_dim);
}

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
  check_kv_cache_type(config, options_.kv_type_k, "keys", "--cache-type-k");
  check_kv_cache_type(config, options_.kv_type_v, "values", "--cache-type-v");
  key_row_bytes_ = row_bytes(options_.kv_type_k, config.kv_dim());
  value_row_bytes_ = row_bytes(options_.kv_type_v, config.kv_dim());
  key_head_bytes_ = row_bytes(options_.kv_type_k, config.head_dim);
  value_head_bytes_ = row_bytes(options_.kv_type_v, config.head_dim);
  const size_t rows = static_cast<size_t>(config.n_layers) * options_.context_size;
  key_cache_.resize(rows * key_row_bytes_);
  value_cache_.resize(rows * value_row_bytes_);
  const size_t b = options_.max_batch;
  x_.resize(b * config.d_model);
  xn_.resize(b * config.d_model);
  out_.resize(b * config.d_model);
  q_.resize(b * config.q_dim());
  attn_.resize(b * config.q_dim());
  k_.resize(b * config.kv_dim());
  v_.resize(b * config.kv_dim());
  logits_.resize(static_cast<size_t>(std::max(options_.kept_logit_rows(), 1)) * config.vocab_size);
  scores_.resize(static_cast<size_t>(pool.size()) * options_.context_size);
  // Prepared once here, so that preparing a query per head in attention() only overwrites.
  queries_.resize(pool.size());
  for (PreparedInput& query : queries_) {
    query.prepare(options_.kv_type_k, q_.data(), config.head_dim);
  }
}

size_t Transformer::kv_cache_bytes() const { return key_cache_.size() + value_cache_.size(); }

void Transformer::truncate(int n) { n_past_ = std::clamp(n, 0, n_past_); }

void Transformer::check_tokens(std::span<const int32_t> tokens) const {
  if (tokens.empty()) fail("forward() needs at least one token");
  if (n_past_ + static_cast<int64_t>(tokens.size()) > options_.context_size) {
    fail("the context is full: {} tokens already, {} more would exceed the context size {}; "
         "use a larger --ctx-size or a shorter prompt",
         n_past_, tokens.size(), options_.context_size);
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= config_.vocab_size) {
      fail("token id {} is outside the vocabulary (0..{})", t, config_.vocab_size - 1);
    }
  }
}

const Matrix* Transformer::output_head() const {
  if (options_.weight_stream && options_.weight_stream->streams_output()) return nullptr;
  return &weights_.output;
}

std::span<const float> Transformer::forward_hidden(std::span<const int32_t> tokens) {
  check_tokens(tokens);
  if (static_cast<int64_t>(tokens.size()) > options_.max_batch) {
    fail("forward_hidden() takes at most the batch size ({}) tokens at once, not {}",
         options_.max_batch, tokens.size());
  }
  forward_batch(tokens, false, true);
  return {xn_.data(), tokens.size() * static_cast<size_t>(config_.d_model)};
}

std::span<const float> Transformer::forward(std::span<const int32_t> tokens, bool all_logits) {
  check_tokens(tokens);
  if (all_logits && !options_.all_logits) {
    fail("internal error: forward() was asked for the logits of every token, but this "
         "Transformer was built without all_logits (TransformerOptions::all_logits)");
  }
  if (all_logits && static_cast<int64_t>(tokens.size()) > options_.kept_logit_rows()) {
    fail("all logits were asked for {} tokens, more than the {} rows kept (batch size {})",
         tokens.size(), options_.kept_logit_rows(), options_.max_batch);
  }
  for (size_t start = 0; start < tokens.size(); start += options_.max_batch) {
    const size_t n = std::min<size_t>(options_.max_batch, tokens.size() - start);
    forward_batch(tokens.subspan(start, n), all_logits);
  }
  const size_t vocab = config_.vocab_size;
  if (all_logits) return {logits_.data(), tokens.size() * vocab};
  return {logits_.data(), vocab};
}

void Transformer::forward_batch(std::span<const int32_t> tokens, bool all_logits,
                                bool hidden_only) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t d = c.d_model;

  // x = embedding of each token (scaled by sqrt(d_model) in Gemma).
  const float embed_scale = c.scale_embeddings ? std::sqrt(static_cast<float>(d)) : 1.0f;
  embedding_.rows(tokens, x_.data());
  if (embed_scale != 1.0f) scale_f32(x_.data(), embed_scale, n * d);

  for (int layer = 0; layer < c.n_layers; ++layer) {
    const LayerWeights& w = options_.weight_stream
                                ? options_.weight_stream->layer(layer, weights_.layers[layer])
                                : weights_.layers[layer];
    // x += Attention(RMSNorm(x))
    rms_norm(x_.data(), w.attn_norm.data, xn_.data(), n, d, c.rms_eps);
    attention(layer, w, n);
    if (w.post_attn_norm) rms_norm(out_.data(), w.post_attn_norm.data, out_.data(), n, d, c.rms_eps);
    for (int64_t i = 0; i < n * d; ++i) x_[i] += out_[i];
    // x += FFN(RMSNorm(x))
    rms_norm(x_.data(), w.ffn_norm.data, xn_.data(), n, d, c.rms_eps);
    ffn_.forward(layer, xn_.data(), n, out_.data());
    if (w.post_ffn_norm) rms_norm(out_.data(), w.post_ffn_norm.data, out_.data(), n, d, c.rms_eps);
    for (int64_t i = 0; i < n * d; ++i) x_[i] += out_[i];
  }

  if (hidden_only) {
    rms_norm(x_.data(), weights_.output_norm.data, xn_.data(), n, d, c.rms_eps);
    n_past_ += static_cast<int>(n);
    return;
  }
  // logits = W_out RMSNorm(x), for the last token only unless all are wanted.
  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t rows = n - first;
  rms_norm(x_.data() + first * d, weights_.output_norm.data, xn_.data(), rows, d, c.rms_eps);
  if (!options_.weight_stream || !options_.weight_stream->output(xn_.data(), rows, logits_.data())) {
    linear(weights_.output, xn_.data(), rows, logits_.data(), pool_);
  }
  n_past_ += static_cast<int>(n);
}

// Grouped-query attention for the n tokens at positions n_past_.. of one layer, reading xn_
// and writing out_ (n x d_model). Keys and values are appended to the cache first (in its
// storage types), so each token attends to everything before it and to itself (causal).
void Transformer::attention(int layer, const LayerWeights& w, int64_t n) {
  const ModelConfig& c = config_;
  const int hd = c.head_dim;
  linear(w.wq, xn_.data(), n, q_.data(), pool_, w.bq);
  linear(w.wk, xn_.data(), n, k_.data(), pool_, w.bk);
  linear(w.wv, xn_.data(), n, v_.data(), pool_, w.bv);
  if (const LoraSet* lora = options_.lora) {
    lora->apply(layer, LoraTarget::AttnQ, xn_.data(), n, q_.data());
    lora->apply(layer, LoraTarget::AttnK, xn_.data(), n, k_.data());
    lora->apply(layer, LoraTarget::AttnV, xn_.data(), n, v_.data());
  }

  const bool local = c.is_local_layer(layer);
  const float rope_base = local ? c.rope_base_local : c.rope_base;
  const float rope_scale = local ? 1.0f : c.rope_scale;
  const size_t layer_rows = static_cast<size_t>(layer) * options_.context_size;
  uint8_t* key_cache = key_cache_.data() + layer_rows * key_row_bytes_;
  uint8_t* value_cache = value_cache_.data() + layer_rows * value_row_bytes_;
  for (int64_t t = 0; t < n; ++t) {
    float* q = q_.data() + t * c.q_dim();
    float* k = k_.data() + t * c.kv_dim();
    if (w.q_norm) rms_norm(q, w.q_norm.data, q, c.n_heads, hd, c.rms_eps);
    if (w.k_norm) rms_norm(k, w.k_norm.data, k, c.n_kv_heads, hd, c.rms_eps);
    const int64_t pos = n_past_ + t;
    apply_rope(q, c.n_heads, hd, c.rope_dims, c.rope_style, pos, rope_base, rope_scale);
    apply_rope(k, c.n_kv_heads, hd, c.rope_dims, c.rope_style, pos, rope_base, rope_scale);
    quantize_row(options_.kv_type_k, k, key_cache + pos * key_row_bytes_, c.kv_dim());
    quantize_row(options_.kv_type_v, v_.data() + t * c.kv_dim(),
                 value_cache + pos * value_row_bytes_, c.kv_dim());
  }

  const int group = c.n_heads / c.n_kv_heads;
  pool_.parallel_for(n * c.n_heads, [&](int64_t begin, int64_t end, int thread) {
    float* scores = scores_.data() + static_cast<size_t>(thread) * options_.context_size;
    PreparedInput& query = queries_[thread];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t t = job / c.n_heads;
      const int h = static_cast<int>(job % c.n_heads);
      const int kv_head = h / group;
      const int64_t pos = n_past_ + t;
      const int64_t start = local ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
      query.prepare(options_.kv_type_k, q_.data() + t * c.q_dim() + h * hd, hd);
      const int64_t count = pos - start + 1;
      const uint8_t* keys = key_cache + start * key_row_bytes_ + kv_head * key_head_bytes_;
      matvec_rows(options_.kv_type_k, keys, key_row_bytes_, query, 0, count, scores);
      scale_f32(scores, c.attention_scale, count);
      softmax(scores, count);
      float* o = attn_.data() + t * c.q_dim() + h * hd;
      std::fill_n(o, hd, 0.0f);
      const uint8_t* values = value_cache + kv_head * value_head_bytes_;
      for (int64_t p = start; p <= pos; ++p) {
        axpy_row(options_.kv_type_v, values + p * value_row_bytes_, scores[p - start], o, hd);
      }
    }
  });
  linear(w.wo, attn_.data(), n, out_.data(), pool_);
  if (options_.lora) options_.lora->apply(layer, LoraTarget::AttnOutput, attn_.data(), n, out_.data());
}

}  // namespace flashlm
