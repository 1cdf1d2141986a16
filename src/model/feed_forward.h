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

// One layer of one forward pass as the FFN sees it, said by the transformer rather than
// guessed: which pass this is (the clock a neuron cache's window counts in), the layer, the
// layer computed after it (where a read-ahead should go: the next pass's first layer after the
// last one), the pass's tokens and how many sequences they belong to, and whether the pass
// is a draft that computes only the neurons in DRAM.
struct FfnStep {
  uint64_t pass = 0;
  int layer = 0;
  int next_layer = 0;
  int64_t n_tokens = 1;
  int sequences = 1;
  // The model drafting for itself (speculative/self_drafter.h): compute only the neurons held
  // in DRAM, read nothing, and leave any read-ahead of the real passes as it is. An FFN with
  // every neuron in DRAM computes them all.
  bool resident_only = false;
};

class FeedForward {
 public:
  virtual ~FeedForward() = default;
  // out[t] = FFN_layer(x[t]) for t < step.n_tokens; x is the normalized hidden state,
  // n_tokens x d_model, and out has the same shape.
  virtual void forward(const FfnStep& step, const float* x, float* out) = 0;
  // The share of each layer's neurons a resident_only step computes, when it is a real part of
  // the FFN (0 < share < 1: some neurons in DRAM, the others on flash); 0 where resident_only
  // steps are not supported (the FFN reads what it computes) and 1 where everything is in DRAM.
  virtual double resident_share() const { return 1.0; }
};

// All FFN weights in DRAM: down(act(gate(x)) * up(x)), each matrix with the LoRA adapters of
// `lora` (null: none) added.
class DenseFeedForward : public FeedForward {
 public:
  DenseFeedForward(const ModelConfig& config, const ModelWeights& weights, ThreadPool& pool,
                   const LoraSet* lora = nullptr);
  void forward(const FfnStep& step, const float* x, float* out) override;

 private:
  const ModelConfig& config_;
  const ModelWeights& weights_;
  ThreadPool& pool_;
  const LoraSet* lora_;
  std::vector<float> gate_, up_, hidden_;
};

}  // namespace flashlm
