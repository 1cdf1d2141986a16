// The FFN computed neuron by neuron over bundles, wherever the bundles sit (the neuron cache,
// a buffer just read from flash, a memory map):
//
//   out = sum over neurons i of  act(gate_i . x) * (up_i . x) * down_i
//
// which equals the dense down(act(gate(x)) * up(x)) restricted to the given neurons, and
// works directly on the stored (quantized) bundle bytes.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "flash/flash_layout.h"
#include "model/config.h"
#include "quant/kernels.h"

namespace flashlm {

class ThreadPool;

class SparseFfn {
 public:
  SparseFfn(const BundleLayout& layout, Activation activation, ThreadPool& pool);

  // out[t] (n_tokens x d_model) = the FFN of x[t] over the neurons whose bundles are given.
  // Neurons whose activation h = act(gate . x) * (up . x) has magnitude at most `threshold`
  // contribute nothing (training-free sparsity in the spirit of CATS, which thresholds
  // act(gate . x) alone; thresholding h, the neuron's actual weight in the output, loses less
  // at the same sparsity); 0 keeps every neuron.
  void forward(std::span<const uint8_t* const> bundles, const float* x, int64_t n_tokens,
               float* out, float threshold = 0.0f);

  // The activation h = act(gate . x) * (up . x) (act(up . x) when not gated) of each given
  // neuron for one token; calibration records these to choose thresholds and train predictors.
  void activations(std::span<const uint8_t* const> bundles, const float* x, float* out);

 private:
  void prepare(const float* x, int64_t n_tokens);
  float activation(const uint8_t* bundle, int64_t token) const;
  // h from the gate and up dot products: act(gate) * up, or act(up) when not gated.
  float combine(float gate, float up) const;
  void neurons(std::span<const uint8_t* const> bundles, int64_t n_tokens, float threshold,
               float* acc, int thread);

  static constexpr int64_t kRun = 16;  // bundles per call of the matrix kernel

  const BundleLayout layout_;
  const Activation activation_;
  ThreadPool& pool_;
  std::vector<PreparedInput> gate_inputs_, up_inputs_;
  std::vector<std::vector<float>> accumulators_;           // one n_tokens x d_model sum per slice
  std::vector<std::vector<float>> token_activations_;      // kRun x n_tokens per thread
  std::vector<std::vector<float>> batch_gate_, batch_up_;  // kRun x n_tokens per thread
};

}  // namespace flashlm
