#include "model/transformer.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/thread_pool.h"
#include "lora/lora.h"
#include "ops/ops.h"
#include "quant/kernels.h"

namespace flashlm {

TensorType parse_kv_cache_type(const std::string& name) {
  if (name == "f32") return TensorType::F32;
  if (name == "f16") return TensorType::F16;
  if (name == "q8_0") return TensorType::Q8_0;
  fail("unknown KV cache type '{}': the choices are f32, f16 and q8_0", name);
}

uint64_t Transformer::scratch_bytes(const ModelConfig& c, const TransformerOptions& options,
                                    int threads) {
  const uint64_t batch = std::max(options.max_batch, 0);
  const uint64_t logit_rows = static_cast<uint64_t>(options.logit_buffer_rows());
  const uint64_t workers = std::max(threads, 1);
  // Besides the floats: each token's id, cache and position, and the rows that get logits.
  const uint64_t per_token = sizeof(int32_t) + sizeof(KvCache*) + 2 * sizeof(int64_t);
  const uint64_t floats = batch * (3 * c.d_model + 2 * c.q_dim() + 2 * c.kv_dim()) +
                          logit_rows * c.vocab_size +
                          workers * std::max(options.context_size, 0);
  return floats * sizeof(float) + batch * per_token +
         workers * PreparedInput::bytes(options.kv_type_k, c.head_dim);
}

Transformer::Transformer(const ModelConfig& config, const ModelWeights& weights,
                         FeedForward& ffn, ThreadPool& pool, TransformerOptions options)
    : config_(config),
      weights_(weights),
      ffn_(ffn),
      resident_embedding_(weights.token_embedding),
      embedding_(options.embedding ? *options.embedding : resident_embedding_),
      pool_(pool),
      options_(options),
      cache_(config, std::max(options.context_size, 1), options.kv_type_k, options.kv_type_v) {
  if (options_.context_size <= 0 || options_.max_batch <= 0) {
    fail("context size and batch size must be positive (got {} and {})", options_.context_size,
         options_.max_batch);
  }
  const size_t b = options_.max_batch;
  x_.resize(b * config.d_model);
  xn_.resize(b * config.d_model);
  out_.resize(b * config.d_model);
  q_.resize(b * config.q_dim());
  attn_.resize(b * config.q_dim());
  k_.resize(b * config.kv_dim());
  v_.resize(b * config.kv_dim());
  logits_.resize(static_cast<size_t>(options_.logit_buffer_rows()) * config.vocab_size);
  tokens_.resize(b);
  token_cache_.resize(b);
  token_pos_.resize(b);
  token_slot_.resize(b);
  logit_rows_.reserve(std::max<size_t>(b, options_.logit_buffer_rows()));
  scores_.resize(static_cast<size_t>(pool.size()) * options_.context_size);
  // Prepared once here, so that preparing a query per head in attention() only overwrites.
  queries_.resize(pool.size());
  for (PreparedInput& query : queries_) {
    query.prepare(options_.kv_type_k, q_.data(), config.head_dim);
  }
}

void Transformer::check_tokens(const KvCache& cache, std::span<const int32_t> tokens) const {
  if (tokens.empty()) fail("forward() needs at least one token");
  if (cache.size() + static_cast<int64_t>(tokens.size()) > cache.capacity()) {
    fail("the context is full: {} tokens already, {} more would exceed the context size {}; "
         "use a larger --ctx-size or a shorter prompt",
         cache.size(), tokens.size(), cache.capacity());
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
  check_tokens(cache_, tokens);
  if (static_cast<int64_t>(tokens.size()) > options_.max_batch) {
    fail("forward_hidden() takes at most the batch size ({}) tokens at once, not {}",
         options_.max_batch, tokens.size());
  }
  forward_own(tokens, false, {.hidden_only = true});
  return {xn_.data(), tokens.size() * static_cast<size_t>(config_.d_model)};
}

std::span<const float> Transformer::forward(std::span<const int32_t> tokens, bool all_logits) {
  check_tokens(cache_, tokens);
  if (all_logits && !options_.all_logits) {
    fail("internal error: forward() was asked for the logits of every token, but this "
         "Transformer was built without all_logits (TransformerOptions::all_logits)");
  }
  if (all_logits && static_cast<int64_t>(tokens.size()) > options_.kept_logit_rows()) {
    fail("all logits were asked for {} tokens, more than the {} rows kept (batch size {})",
         tokens.size(), options_.kept_logit_rows(), options_.max_batch);
  }
  forward_own(tokens, all_logits, {});
  const size_t vocab = config_.vocab_size;
  if (all_logits) return {logits_.data(), tokens.size() * vocab};
  return {logits_.data(), vocab};
}

std::span<const float> Transformer::forward_tree(std::span<const int32_t> tokens,
                                                 std::span<const int32_t> parents) {
  check_tokens(cache_, tokens);
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (!options_.all_logits || n > options_.kept_logit_rows() || parents.size() != tokens.size()) {
    fail("internal error: a tree of {} tokens for a transformer keeping {} rows of logits", n,
         options_.all_logits ? options_.kept_logit_rows() : 0);
  }
  const int64_t base = cache_.size();
  tree_paths_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t parent = parents[i];
    if (i == 0 ? parent != -1 : parent < 0 || parent >= i) {
      fail("internal error: token {} of a draft tree follows {}", i, parent);
    }
    std::vector<int64_t>& path = tree_paths_[i];
    if (i == 0) {
      path.clear();
    } else {
      path = tree_paths_[parent];
    }
    path.push_back(base + i);  // its own row: rows follow the tree's order
    tokens_[i] = tokens[i];
    token_cache_[i] = &cache_;
    token_pos_[i] = base + static_cast<int64_t>(path.size()) - 1;  // its depth
    token_slot_[i] = base + i;
  }
  logit_rows_.clear();
  for (int64_t i = 0; i < n; ++i) logit_rows_.push_back(i);
  tree_base_ = base;
  try {
    forward_batch(n, logit_rows_, Pass{});
  } catch (...) {
    tree_base_ = -1;
    throw;
  }
  tree_base_ = -1;
  return {logits_.data(), static_cast<size_t>(n) * config_.vocab_size};
}

std::span<const float> Transformer::forward_resident(std::span<const int32_t> tokens,
                                                     int64_t vocab_rows) {
  check_tokens(cache_, tokens);
  forward_own(tokens, false, {.resident_only = true, .vocab_rows = vocab_rows});
  return {logits_.data(), static_cast<size_t>(last_vocab_rows_)};
}

void Transformer::forward_own(std::span<const int32_t> tokens, bool all_logits,
                              const Pass& pass) {
  for (size_t start = 0; start < tokens.size(); start += options_.max_batch) {
    const SequenceStep step{&cache_,
                            tokens.subspan(start, std::min<size_t>(options_.max_batch,
                                                                   tokens.size() - start))};
    const int64_t n = gather({&step, 1});
    logit_rows_.clear();
    for (int64_t i = all_logits ? 0 : n - 1; i < n; ++i) logit_rows_.push_back(i);
    forward_batch(n, logit_rows_, pass);
  }
}

std::span<const float> Transformer::forward(std::span<const SequenceStep> steps) {
  if (steps.empty()) fail("forward() needs at least one sequence");
  if (static_cast<int>(steps.size()) > max_sequences()) {
    fail("internal error: a pass of {} sequences, more than the {} this Transformer was built for "
         "(TransformerOptions::sequences)",
         steps.size(), max_sequences());
  }
  int64_t total = 0;
  for (const SequenceStep& step : steps) {
    if (!step.cache || step.cache->capacity() > options_.context_size ||
        step.cache->key_type() != options_.kv_type_k ||
        step.cache->value_type() != options_.kv_type_v) {
      fail("internal error: a sequence's KV cache is missing, larger than the context size {} or "
           "of other types than the transformer's",
           options_.context_size);
    }
    check_tokens(*step.cache, step.tokens);
    for (const SequenceStep& other : steps) {
      if (&other != &step && other.cache == step.cache) {
        fail("internal error: two steps of one pass append to the same KV cache");
      }
    }
    total += static_cast<int64_t>(step.tokens.size());
  }
  if (total > options_.max_batch) {
    fail("a pass of {} tokens is more than the batch size {}", total, options_.max_batch);
  }
  const int64_t n = gather(steps);
  logit_rows_.clear();
  int64_t end = 0;
  for (const SequenceStep& step : steps) {
    end += static_cast<int64_t>(step.tokens.size());
    logit_rows_.push_back(end - 1);
  }
  forward_batch(n, logit_rows_, Pass{});
  return {logits_.data(), steps.size() * static_cast<size_t>(config_.vocab_size)};
}

int64_t Transformer::gather(std::span<const SequenceStep> steps) {
  int64_t n = 0;
  for (const SequenceStep& step : steps) {
    for (size_t i = 0; i < step.tokens.size(); ++i, ++n) {
      tokens_[n] = step.tokens[i];
      token_cache_[n] = step.cache;
      token_pos_[n] = step.cache->size() + static_cast<int64_t>(i);
      token_slot_[n] = token_pos_[n];
    }
  }
  return n;
}

void Transformer::forward_batch(int64_t n, std::span<const int64_t> logit_rows,
                                const Pass& pass) {
  const ModelConfig& c = config_;
  const int64_t d = c.d_model;
  const std::span<const int32_t> tokens(tokens_.data(), static_cast<size_t>(n));
  FfnStep step{.pass = ++passes_, .n_tokens = n, .sequences = 1, .resident_only = pass.resident_only};
  for (int64_t i = 1; i < n; ++i) step.sequences += token_cache_[i] != token_cache_[i - 1];

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
    step.layer = layer;
    step.next_layer = (layer + 1) % c.n_layers;  // after the last, the next pass's first
    ffn_.forward(step, xn_.data(), out_.data());
    if (w.post_ffn_norm) rms_norm(out_.data(), w.post_ffn_norm.data, out_.data(), n, d, c.rms_eps);
    for (int64_t i = 0; i < n * d; ++i) x_[i] += out_[i];
  }

  for (int64_t i = 0; i < n; ++i) token_cache_[i]->extend(1);
  if (pass.hidden_only) {
    rms_norm(x_.data(), weights_.output_norm.data, xn_.data(), n, d, c.rms_eps);
    return;
  }
  // logits = W_out RMSNorm(x), for the rows asked for (a sequence's last token, or all).
  const int64_t rows = static_cast<int64_t>(logit_rows.size());
  for (int64_t r = 0; r < rows; ++r) {
    rms_norm(x_.data() + logit_rows[r] * d, weights_.output_norm.data, xn_.data() + r * d, 1, d,
             c.rms_eps);
  }
  last_vocab_rows_ = c.vocab_size;
  if (options_.weight_stream && options_.weight_stream->output(xn_.data(), rows, logits_.data())) {
    return;
  }
  Matrix head = weights_.output;
  if (pass.vocab_rows > 0 && pass.vocab_rows < head.rows) {
    // The first rows alone (a draft's vocabulary): one row of logits, vocab_rows long.
    if (rows != 1) fail("internal error: a pass of {} logit rows with a cut vocabulary", rows);
    head.rows = last_vocab_rows_ = pass.vocab_rows;
  }
  linear(head, xn_.data(), rows, logits_.data(), pool_);
}

// Grouped-query attention for the n gathered tokens of one layer, each at its position in its
// own sequence's cache, reading xn_ and writing out_ (n x d_model). Keys and values are
// written to the caches first (in their storage types), so each token attends to everything
// before it in its sequence and to itself (causal).
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
  for (int64_t t = 0; t < n; ++t) {
    KvCache& cache = *token_cache_[t];
    float* q = q_.data() + t * c.q_dim();
    float* k = k_.data() + t * c.kv_dim();
    if (w.q_norm) rms_norm(q, w.q_norm.data, q, c.n_heads, hd, c.rms_eps);
    if (w.k_norm) rms_norm(k, w.k_norm.data, k, c.n_kv_heads, hd, c.rms_eps);
    const int64_t pos = token_pos_[t];
    apply_rope(q, c.n_heads, hd, c.rope_dims, c.rope_style, pos, rope_base, rope_scale);
    apply_rope(k, c.n_kv_heads, hd, c.rope_dims, c.rope_style, pos, rope_base, rope_scale);
    const int64_t slot = token_slot_[t];  // = pos, but in a draft tree's pass
    quantize_row(cache.key_type(), k, cache.keys(layer, slot), c.kv_dim());
    quantize_row(cache.value_type(), v_.data() + t * c.kv_dim(), cache.values(layer, slot),
                 c.kv_dim());
  }

  const int group = c.n_heads / c.n_kv_heads;
  pool_.parallel_for(n * c.n_heads, [&](int64_t begin, int64_t end, int thread) {
    float* scores = scores_.data() + static_cast<size_t>(thread) * options_.context_size;
    PreparedInput& query = queries_[thread];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t t = job / c.n_heads;
      const int h = static_cast<int>(job % c.n_heads);
      const int kv_head = h / group;
      KvCache& cache = *token_cache_[t];
      const int64_t pos = token_pos_[t];
      const int64_t start = local ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
      query.prepare(cache.key_type(), q_.data() + t * c.q_dim() + h * hd, hd);
      const int64_t count = pos - start + 1;
      const uint8_t* keys = cache.keys(layer, 0) + kv_head * cache.key_head_bytes();
      const size_t key_row = cache.key_row_bytes();
      // Position p's row: row p, except in a draft tree's pass, whose tokens attend to the
      // cache before the tree and to their own path through it (tree_paths_).
      const std::vector<int64_t>* path = tree_base_ >= 0 ? &tree_paths_[t] : nullptr;
      const int64_t in_cache = path ? std::clamp<int64_t>(tree_base_ - start, 0, count) : count;
      const auto row_of = [&](int64_t p) { return p < tree_base_ || !path ? p : (*path)[p - tree_base_]; };
      matvec_rows(cache.key_type(), keys + start * key_row, key_row, query, 0, in_cache, scores);
      for (int64_t i = in_cache; i < count; ++i) {
        matvec_rows(cache.key_type(), keys + row_of(start + i) * key_row, key_row, query, 0, 1,
                    scores + i);
      }
      scale_f32(scores, c.attention_scale, count);
      softmax(scores, count);
      float* o = attn_.data() + t * c.q_dim() + h * hd;
      std::fill_n(o, hd, 0.0f);
      const size_t value_row = cache.value_row_bytes();
      const uint8_t* values = cache.values(layer, 0) + kv_head * cache.value_head_bytes();
      for (int64_t p = start; p <= pos; ++p) {
        axpy_row(cache.value_type(), values + row_of(p) * value_row, scores[p - start], o, hd);
      }
    }
  });
  linear(w.wo, attn_.data(), n, out_.data(), pool_);
  if (options_.lora) options_.lora->apply(layer, LoraTarget::AttnOutput, attn_.data(), n, out_.data());
}

}  // namespace flashlm
