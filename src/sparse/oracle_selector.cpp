#include "sparse/oracle_selector.h"

#include <cmath>

namespace flashlm {

OracleSelector::OracleSelector(FlashFeedForward& dense, std::vector<float> thresholds, int d_ff,
                               int d_model)
    : dense_(dense),
      thresholds_(std::move(thresholds)),
      d_ff_(d_ff),
      d_model_(d_model),
      activations_(d_ff),
      marked_(d_ff) {}

void OracleSelector::select(int layer, const float* x, int64_t n_tokens,
                            std::vector<int32_t>& active) {
  std::fill(marked_.begin(), marked_.end(), 0);
  for (int64_t t = 0; t < n_tokens; ++t) {
    dense_.activations(layer, x + t * d_model_, activations_.data());
    for (int i = 0; i < d_ff_; ++i) {
      if (std::abs(activations_[i]) > thresholds_[layer]) marked_[i] = 1;
    }
  }
  active.clear();
  for (int i = 0; i < d_ff_; ++i) {
    if (marked_[i]) active.push_back(i);
  }
}

}  // namespace flashlm
