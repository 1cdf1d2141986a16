// The feed-forward half of each transformer layer, behind one interface so the forward pass
// reads the same whether the FFN weights sit in DRAM (dense, the reference) or stream from
// flash (sparse, windowed, bundled).
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace flashlm {

class LoraSet;
class ThreadPool;

class FeedForward {
 public:
  virtual ~FeedForward() = default;
  // out[t] = FFN_layer(x[t]) for t < n_tokens; x is the normalized hidden state,
  // n_tokens x d_model, and out has the same shape.
  virtual void forward(int layer, const float* x, int64_t n_tokens, float* out) = 0;
};

// All FFN weights in DRAM: down(act(gate(x)) * up(x)), each matrix with the LoRA adapters of
// `lora` (null: none) added.
class DenseFeedForward : public FeedForward {
 public:
  DenseFeedForward(const ModelConfig& config, const ModelWeights& weights, ThreadPool& pool,
                   const LoraSet* lora = nullptr);
  void forward(int layer, const float* x, int64_t n_tokens, float* out) override;

 private:
  const ModelConfig& config_;
  const ModelWeights& weights_;
  ThreadPool& pool_;
  const LoraSet* lora_;
  std::vector<float> gate_, up_, hidden_;
};

}  // namespace flashlm
