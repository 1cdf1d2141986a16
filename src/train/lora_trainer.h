// LoRA fine-tuning through the frozen, quantized model, with MeBP's memory discipline:
// - the base weights stay in their own quantization (the forward uses the inference kernels,
//   the backward multiplies by the transposed quantized matrices, row by row);
// - gradient checkpointing per layer: the forward keeps only each layer's input hidden
//   states; the backward recomputes one layer at a time from its input, then goes back
//   through it (backward.h);
// - the loss never builds the tokens x vocabulary logits (loss/cross_entropy.h).
// Only the adapter's matrices get gradients.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "lora/lora.h"
#include "model/config.h"
#include "model/token_embedding.h"
#include "model/weights.h"

namespace flashlm {

class ThreadPool;
class WeightPager;

// The gradient of every LoRA pair, in the adapter's shapes (a and b of each pair).
using LoraGradients = LoraAdapter;
LoraGradients zero_gradients_like(const LoraAdapter& adapter);

class LoraTrainer {
 public:
  // `adapter` is trained in place (its pairs give the shapes); `scale` is the user scale the
  // adapter will be applied with (1 in finetune). Sequences hold at most max_tokens tokens.
  // With a pager, the base weights stay on flash: each layer (and each tile of the output
  // head) is read in as the passes reach it and dropped when they leave it.
  LoraTrainer(const ModelConfig& config, const ModelWeights& weights, LoraAdapter& adapter,
              float scale, ThreadPool& pool, int max_tokens, const WeightPager* pager = nullptr);

  // The loss over a sequence: token t + 1 predicted from tokens 0..t, each target weighted
  // by weight[t] (weight.size() == tokens.size() - 1; 0 leaves a target out). Returns
  // sum_t weight[t] * nll_t; with `grad`, adds its gradient with respect to the adapter.
  double loss(std::span<const int32_t> tokens, std::span<const float> weight,
              LoraGradients* grad = nullptr);

  // The bytes the trainer holds for a sequence of n tokens (checkpoints and one layer's
  // intermediates), for the memory plan.
  static uint64_t scratch_bytes(const ModelConfig& config, int n);

 private:
  struct Layer;  // one layer's intermediates, recomputed in the backward
  void layer_forward(int layer, const float* x, int64_t n, float* out);
  void layer_backward(int layer, const float* x, int64_t n, float* dx, LoraGradients& grad);

  const ModelConfig& config_;
  const ModelWeights& weights_;
  LoraAdapter& adapter_;
  float scale_;
  ThreadPool& pool_;
  int max_tokens_;
  const WeightPager* pager_;
  LoraSet lora_;
  ResidentEmbedding embedding_;
  std::vector<float> checkpoints_;  // [layer][token][d]: each layer's input
  std::vector<float> hidden_, final_x_;
  // One layer's intermediates (n tokens): what the backward needs from the forward.
  std::vector<float> xn1_, q_lin_, q_, k_lin_, k_, v_, p_, o_, a_lin_, h_, xn2_, g_, u_, m_,
      f_lin_;
  // The backward's buffers.
  std::vector<float> dh_, da_, do_, dq_, dk_, dv_, dq_lin_, dk_lin_, dxn_, dm_, dg_, du_, df_;
};

}  // namespace flashlm
