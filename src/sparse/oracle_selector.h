// The oracle: the neurons that really are active (activation above the layer's threshold),
// computed from a dense copy of the FFN. It separates prediction error from I/O cost in
// `sparse-oracle` mode; the dense copy it needs lies outside the memory budget, so it is a
// measuring instrument, not a way to run.
#pragma once

#include <vector>

#include "sparse/flash_ffn.h"
#include "sparse/sparse_feed_forward.h"

namespace flashlm {

class OracleSelector : public NeuronSelector {
 public:
  OracleSelector(FlashFeedForward& dense, std::vector<float> thresholds, int d_ff, int d_model);
  void select(int layer, const float* x, int64_t n_tokens, std::vector<int32_t>& active) override;

 private:
  FlashFeedForward& dense_;
  std::vector<float> thresholds_;
  int d_ff_, d_model_;
  std::vector<float> activations_;
  std::vector<uint8_t> marked_;
};

}  // namespace flashlm
