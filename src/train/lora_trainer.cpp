#include "train/lora_trainer.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/thread_pool.h"
#include "loss/cross_entropy.h"
#include "model/weight_pager.h"
#include "ops/ops.h"
#include "quant/kernels.h"
#include "train/backward.h"

namespace flashlm {
namespace {

void zero(std::vector<float>& v, size_t n) {
  v.resize(n);
  std::fill_n(v.begin(), n, 0.0f);
}

}  // namespace

LoraGradients zero_gradients_like(const LoraAdapter& adapter) {
  LoraGradients g = adapter;
  for (auto& layer : g.layers) {
    for (LoraPair& p : layer) {
      std::fill(p.a.begin(), p.a.end(), 0.0f);
      std::fill(p.b.begin(), p.b.end(), 0.0f);
    }
  }
  return g;
}

uint64_t LoraTrainer::scratch_bytes(const ModelConfig& c, int n) {
  const uint64_t t = static_cast<uint64_t>(n);
  const uint64_t per_token = static_cast<uint64_t>(c.n_layers + 8) * c.d_model +
                             12ull * c.q_dim() + 6ull * c.kv_dim() + 10ull * c.d_ff;
  return (t * per_token + static_cast<uint64_t>(c.n_heads) * t * t) * sizeof(float);
}

LoraTrainer::LoraTrainer(const ModelConfig& config, const ModelWeights& weights,
                         LoraAdapter& adapter, float scale, ThreadPool& pool, int max_tokens,
                         const WeightPager* pager)
    : config_(config),
      weights_(weights),
      adapter_(adapter),
      scale_(scale),
      pool_(pool),
      max_tokens_(max_tokens),
      pager_(pager),
      embedding_(weights.token_embedding) {
  if (config.value_dim != config.head_dim) {
    fail("fine-tuning needs values as wide as keys per head (this model: {} and {})",
         config.value_dim, config.head_dim);
  }
  if (static_cast<int>(adapter.layers.size()) != config.n_layers) {
    fail("the adapter has {} layers, the model {}", adapter.layers.size(), config.n_layers);
  }
  if (max_tokens < 2) fail("a training sequence needs at least 2 tokens (got {})", max_tokens);
  lora_.add(adapter_, scale_);
  const size_t n = static_cast<size_t>(max_tokens);
  checkpoints_.resize(static_cast<size_t>(config.n_layers) * n * config.d_model);
}

// One layer over n tokens at positions 0..n-1, keeping what the backward needs:
//   h = x + PostNorm(Wo Attention(Rope(Norm_q(Wq xn1)), Rope(Norm_k(Wk xn1)), Wv xn1)),
//       xn1 = RMSNorm(x)
//   out = h + PostNorm(Wd act(Wg xn2) * (Wu xn2)), xn2 = RMSNorm(h)
// each W with its LoRA pair added.
void LoraTrainer::layer_forward(int layer, const float* x, int64_t n, float* out) {
  const ModelConfig& c = config_;
  const LayerWeights& w = weights_.layers[layer];
  const int64_t d = c.d_model, qd = c.q_dim(), kd = c.kv_dim(), ff = c.d_ff, hd = c.head_dim;
  xn1_.resize(n * d);
  rms_norm(x, w.attn_norm.data, xn1_.data(), n, d, c.rms_eps);
  q_lin_.resize(n * qd);
  k_lin_.resize(n * kd);
  v_.resize(n * kd);
  linear(w.wq, xn1_.data(), n, q_lin_.data(), pool_, w.bq);
  linear(w.wk, xn1_.data(), n, k_lin_.data(), pool_, w.bk);
  linear(w.wv, xn1_.data(), n, v_.data(), pool_, w.bv);
  lora_.apply(layer, LoraTarget::AttnQ, xn1_.data(), n, q_lin_.data());
  lora_.apply(layer, LoraTarget::AttnK, xn1_.data(), n, k_lin_.data());
  lora_.apply(layer, LoraTarget::AttnV, xn1_.data(), n, v_.data());
  q_ = q_lin_;
  k_ = k_lin_;
  const bool local = c.is_local_layer(layer);
  const float base = local ? c.rope_base_local : c.rope_base;
  const float rope_scale = local ? 1.0f : c.rope_scale;
  for (int64_t t = 0; t < n; ++t) {
    float* q = q_.data() + t * qd;
    float* k = k_.data() + t * kd;
    if (w.q_norm) rms_norm(q, w.q_norm.data, q, c.n_heads, hd, c.rms_eps);
    if (w.k_norm) rms_norm(k, w.k_norm.data, k, c.n_kv_heads, hd, c.rms_eps);
    apply_rope(q, c.n_heads, static_cast<int>(hd), c.rope_dims, c.rope_style, t, base, rope_scale);
    apply_rope(k, c.n_kv_heads, static_cast<int>(hd), c.rope_dims, c.rope_style, t, base, rope_scale);
  }
  p_.resize(static_cast<size_t>(c.n_heads) * n * n);
  o_.resize(n * qd);
  attention_forward(q_.data(), k_.data(), v_.data(), n, c.n_heads, c.n_kv_heads,
                    static_cast<int>(hd), c.attention_scale, local ? c.sliding_window : 0,
                    p_.data(), o_.data(), pool_);
  a_lin_.resize(n * d);
  linear(w.wo, o_.data(), n, a_lin_.data(), pool_);
  lora_.apply(layer, LoraTarget::AttnOutput, o_.data(), n, a_lin_.data());
  h_.resize(n * d);
  if (w.post_attn_norm) {
    rms_norm(a_lin_.data(), w.post_attn_norm.data, h_.data(), n, d, c.rms_eps);
  } else {
    std::copy_n(a_lin_.data(), n * d, h_.data());
  }
  for (int64_t i = 0; i < n * d; ++i) h_[i] += x[i];

  xn2_.resize(n * d);
  rms_norm(h_.data(), w.ffn_norm.data, xn2_.data(), n, d, c.rms_eps);
  g_.resize(n * ff);
  u_.resize(n * ff);
  m_.resize(n * ff);
  if (c.ffn_gated) {
    linear(w.ffn_gate, xn2_.data(), n, g_.data(), pool_);
    lora_.apply(layer, LoraTarget::FfnGate, xn2_.data(), n, g_.data());
  }
  linear(w.ffn_up, xn2_.data(), n, u_.data(), pool_);
  lora_.apply(layer, LoraTarget::FfnUp, xn2_.data(), n, u_.data());
  gated_activation(c.activation, c.ffn_gated ? g_.data() : nullptr, u_.data(), m_.data(), n * ff);
  f_lin_.resize(n * d);
  linear(w.ffn_down, m_.data(), n, f_lin_.data(), pool_);
  lora_.apply(layer, LoraTarget::FfnDown, m_.data(), n, f_lin_.data());
  if (w.post_ffn_norm) {
    rms_norm(f_lin_.data(), w.post_ffn_norm.data, out, n, d, c.rms_eps);
  } else {
    std::copy_n(f_lin_.data(), n * d, out);
  }
  for (int64_t i = 0; i < n * d; ++i) out[i] += h_[i];
}

// dx: on entry the gradient with respect to the layer's output, on return with respect to
// its input x. Needs layer_forward(layer, x, ...) just before (its intermediates).
void LoraTrainer::layer_backward(int layer, const float* x, int64_t n, float* dx,
                                 LoraGradients& grad) {
  const ModelConfig& c = config_;
  const LayerWeights& w = weights_.layers[layer];
  const int64_t d = c.d_model, qd = c.q_dim(), kd = c.kv_dim(), ff = c.d_ff, hd = c.head_dim;
  auto pair_backward = [&](LoraTarget t, const float* in, const float* dy, float* din) {
    const LoraPair& p = adapter_.pair(layer, t);
    if (p.empty()) return;
    LoraPair& g = grad.pair(layer, t);
    lora_backward(p, LoraSet::pair_scale(adapter_, p, scale_), in, dy, n, g.a.data(), g.b.data(),
                  din);
  };
  // out = h + PostNorm(f_lin): dh = dout, df = PostNorm'(dout).
  dh_.assign(dx, dx + n * d);
  if (w.post_ffn_norm) {
    zero(df_, n * d);
    rms_norm_backward(f_lin_.data(), w.post_ffn_norm.data, dx, df_.data(), n, d, c.rms_eps);
  } else {
    df_.assign(dx, dx + n * d);
  }
  // f_lin = Wd m (+ LoRA).
  zero(dm_, n * ff);
  linear_backward_input(w.ffn_down, df_.data(), n, dm_.data(), pool_);
  pair_backward(LoraTarget::FfnDown, m_.data(), df_.data(), dm_.data());
  // m = act(g) * u.
  zero(dg_, n * ff);
  zero(du_, n * ff);
  gated_activation_backward(c.activation, c.ffn_gated ? g_.data() : nullptr, u_.data(),
                            dm_.data(), dg_.data(), du_.data(), n * ff);
  // g = Wg xn2, u = Wu xn2 (+ LoRA).
  zero(dxn_, n * d);
  linear_backward_input(w.ffn_up, du_.data(), n, dxn_.data(), pool_);
  pair_backward(LoraTarget::FfnUp, xn2_.data(), du_.data(), dxn_.data());
  if (c.ffn_gated) {
    linear_backward_input(w.ffn_gate, dg_.data(), n, dxn_.data(), pool_);
    pair_backward(LoraTarget::FfnGate, xn2_.data(), dg_.data(), dxn_.data());
  }
  // xn2 = RMSNorm(h).
  rms_norm_backward(h_.data(), w.ffn_norm.data, dxn_.data(), dh_.data(), n, d, c.rms_eps);

  // h = x + PostNorm(a_lin): dx gets dh, da = PostNorm'(dh).
  std::copy_n(dh_.data(), n * d, dx);
  if (w.post_attn_norm) {
    zero(da_, n * d);
    rms_norm_backward(a_lin_.data(), w.post_attn_norm.data, dh_.data(), da_.data(), n, d, c.rms_eps);
  } else {
    da_ = dh_;
  }
  // a_lin = Wo o (+ LoRA).
  zero(do_, n * qd);
  linear_backward_input(w.wo, da_.data(), n, do_.data(), pool_);
  pair_backward(LoraTarget::AttnOutput, o_.data(), da_.data(), do_.data());
  // o = Attention(q, k, v).
  zero(dq_, n * qd);
  zero(dk_, n * kd);
  zero(dv_, n * kd);
  attention_backward(q_.data(), k_.data(), v_.data(), p_.data(), do_.data(), n, c.n_heads,
                     c.n_kv_heads, static_cast<int>(hd), c.attention_scale, dq_.data(), dk_.data(),
                     dv_.data(), pool_);
  // q = Rope(Norm_q(q_lin)), k likewise.
  const bool local = c.is_local_layer(layer);
  const float base = local ? c.rope_base_local : c.rope_base;
  const float rope_scale = local ? 1.0f : c.rope_scale;
  for (int64_t t = 0; t < n; ++t) {
    rope_backward(dq_.data() + t * qd, c.n_heads, static_cast<int>(hd), c.rope_dims, c.rope_style,
                  t, base, rope_scale);
    rope_backward(dk_.data() + t * kd, c.n_kv_heads, static_cast<int>(hd), c.rope_dims,
                  c.rope_style, t, base, rope_scale);
  }
  const float* dq = dq_.data();
  const float* dk = dk_.data();
  if (w.q_norm) {
    zero(dq_lin_, n * qd);
    rms_norm_backward(q_lin_.data(), w.q_norm.data, dq_.data(), dq_lin_.data(), n * c.n_heads, hd,
                      c.rms_eps);
    dq = dq_lin_.data();
  }
  if (w.k_norm) {
    zero(dk_lin_, n * kd);
    rms_norm_backward(k_lin_.data(), w.k_norm.data, dk_.data(), dk_lin_.data(), n * c.n_kv_heads,
                      hd, c.rms_eps);
    dk = dk_lin_.data();
  }
  // q_lin = Wq xn1, k_lin = Wk xn1, v = Wv xn1 (+ LoRA).
  zero(dxn_, n * d);
  linear_backward_input(w.wq, dq, n, dxn_.data(), pool_);
  linear_backward_input(w.wk, dk, n, dxn_.data(), pool_);
  linear_backward_input(w.wv, dv_.data(), n, dxn_.data(), pool_);
  pair_backward(LoraTarget::AttnQ, xn1_.data(), dq, dxn_.data());
  pair_backward(LoraTarget::AttnK, xn1_.data(), dk, dxn_.data());
  pair_backward(LoraTarget::AttnV, xn1_.data(), dv_.data(), dxn_.data());
  // xn1 = RMSNorm(x).
  rms_norm_backward(x, w.attn_norm.data, dxn_.data(), dx, n, d, c.rms_eps);
}

double LoraTrainer::loss(std::span<const int32_t> tokens, std::span<const float> weight,
                         LoraGradients* grad) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size()) - 1;  // positions that predict
  if (n < 1 || n > max_tokens_) {
    fail("a training sequence must hold 2..{} tokens (got {})", max_tokens_ + 1, tokens.size());
  }
  if (static_cast<int64_t>(weight.size()) != n) {
    fail("internal error: {} target weights for {} targets", weight.size(), n);
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= c.vocab_size) fail("token id {} is outside the vocabulary", t);
  }
  const int64_t d = c.d_model;
  const std::span<const int32_t> inputs = tokens.first(n);
  // With the weights on flash, each layer is read in while the one before computes and dropped
  // after it; the last stays for the backward, which starts with it.
  const auto enter = [&](int layer) {
    if (pager_) pager_->prefetch_layer(layer);
  };
  const auto leave = [&](int layer) {
    if (pager_) pager_->release_layer(layer);
  };
  TiledLossOptions head;
  if (pager_) {
    head.prefetch_rows = [&](int64_t b, int64_t e) { pager_->prefetch_output_rows(b, e); };
    head.release_rows = [&](int64_t b, int64_t e) { pager_->release_output_rows(b, e); };
  }

  // Forward, keeping each layer's input.
  enter(0);
  float* x = checkpoints_.data();
  embedding_.rows(inputs, x);
  if (pager_) pager_->release_embedding();
  if (c.scale_embeddings) scale_f32(x, std::sqrt(static_cast<float>(d)), n * d);
  final_x_.resize(n * d);
  for (int l = 0; l < c.n_layers; ++l) {
    float* out = l + 1 < c.n_layers ? checkpoints_.data() + (l + 1) * static_cast<size_t>(max_tokens_) * d
                                    : final_x_.data();
    enter(l + 1);
    layer_forward(l, checkpoints_.data() + l * static_cast<size_t>(max_tokens_) * d, n, out);
    if (!grad || l + 1 < c.n_layers) leave(l);
  }
  hidden_.resize(n * d);
  rms_norm(final_x_.data(), weights_.output_norm.data, hidden_.data(), n, d, c.rms_eps);
  std::vector<float> nll(n), lse(n);
  const std::span<const int32_t> targets = tokens.subspan(1);
  tiled_cross_entropy(weights_.output, hidden_.data(), n, targets.data(), nll.data(), lse.data(),
                      pool_, head);
  double total = 0;
  for (int64_t t = 0; t < n; ++t) total += double{weight[t]} * nll[t];
  if (!grad) return total;

  // Backward: the loss, the final norm, then each layer recomputed from its input.
  std::vector<float> dhidden(n * d, 0.0f), dx(n * d, 0.0f);
  tiled_cross_entropy_backward(weights_.output, hidden_.data(), n, targets.data(), lse.data(),
                               weight.data(), dhidden.data(), pool_, head);
  rms_norm_backward(final_x_.data(), weights_.output_norm.data, dhidden.data(), dx.data(), n, d,
                    c.rms_eps);
  std::vector<float> scratch(n * d);
  for (int l = c.n_layers - 1; l >= 0; --l) {
    const float* in = checkpoints_.data() + l * static_cast<size_t>(max_tokens_) * d;
    enter(l - 1);
    layer_forward(l, in, n, scratch.data());  // the checkpoint's recomputation
    layer_backward(l, in, n, dx.data(), *grad);
    leave(l);
  }
  return total;
}

}  // namespace flashlm
