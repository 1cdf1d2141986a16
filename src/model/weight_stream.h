// Where the forward pass finds each layer's attention matrices and the output head. By default
// they are the weights in DRAM (the mapped model file); under a memory budget too small to
// hold them, a .flm model streams them from flash instead, a step ahead of the compute
// (flash/streamed_weights.h), as the FFN streams its neurons.
#pragma once

#include <cstdint>

#include "model/weights.h"

namespace flashlm {

class WeightStream {
 public:
  virtual ~WeightStream() = default;
  // The weights to compute `layer` with: `resident` itself, or a copy whose attention matrices
  // point at their bytes just read from flash. Valid until layer() is called for the next
  // layer but one; layers are asked for in order, 0..n-1, token after token.
  virtual const LayerWeights& layer(int layer, const LayerWeights& resident) = 0;
  // logits[t * vocab ...] = output x[t * d_model ...] for t < n_tokens, when the output head
  // streams; false when it is resident (the caller computes it).
  virtual bool output(const float* x, int64_t n_tokens, float* logits) = 0;
  // Whether output() computes the head (it is not in DRAM).
  virtual bool streams_output() const = 0;
};

}  // namespace flashlm
