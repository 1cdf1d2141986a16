#include "model/feed_forward.h"

#include "common/thread_pool.h"
#include "lora/lora.h"
#include "ops/ops.h"

namespace flashlm {

DenseFeedForward::DenseFeedForward(const ModelConfig& config, const ModelWeights& weights,
                                   ThreadPool& pool, const LoraSet* lora)
    : config_(config), weights_(weights), pool_(pool), lora_(lora) {}

void DenseFeedForward::forward(const FfnStep& step, const float* x, float* out) {
  const int layer = step.layer;
  const int64_t n_tokens = step.n_tokens;
  const LayerWeights& w = weights_.layers[layer];
  const size_t n = static_cast<size_t>(n_tokens) * config_.d_ff;
  if (gate_.size() < n) {
    gate_.resize(n);
    up_.resize(n);
    hidden_.resize(n);
  }
  if (config_.ffn_gated) linear(w.ffn_gate, x, n_tokens, gate_.data(), pool_);
  linear(w.ffn_up, x, n_tokens, up_.data(), pool_);
  if (lora_) {
    if (config_.ffn_gated) lora_->apply(layer, LoraTarget::FfnGate, x, n_tokens, gate_.data());
    lora_->apply(layer, LoraTarget::FfnUp, x, n_tokens, up_.data());
  }
  gated_activation(config_.activation, config_.ffn_gated ? gate_.data() : nullptr, up_.data(),
                   hidden_.data(), static_cast<int64_t>(n));
  linear(w.ffn_down, hidden_.data(), n_tokens, out, pool_);
  if (lora_) lora_->apply(layer, LoraTarget::FfnDown, hidden_.data(), n_tokens, out);
}

}  // namespace flashlm
