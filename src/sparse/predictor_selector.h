// `sparse` mode's selector: the trained low-rank predictors choose each layer's neurons from
// the FFN input alone, so nothing outside the memory budget is touched. Optionally an oracle
// runs beside it to measure recall and precision online (a measuring instrument: bench only).
#pragma once

#include <cstdint>
#include <vector>

#include "sparse/predictor.h"
#include "sparse/sparse_feed_forward.h"

namespace flashlm {

class ThreadPool;

// Counts of (token, neuron) decisions against the true active set.
struct PredictorQuality {
  uint64_t true_positives = 0, false_positives = 0, false_negatives = 0;
  double recall() const;
  double precision() const;
};

// Holds the predictor in its compact form only: the F32 one, moved in, is released when the
// constructor returns.
class PredictorSelector : public NeuronSelector {
 public:
  PredictorSelector(ActivationPredictor predictor, ThreadPool& pool);
  // The predictor memory a selector built from `predictor` holds, for the memory plan.
  static uint64_t bytes_for(const ActivationPredictor& predictor) {
    return CompactPredictor::bytes_for(predictor);
  }
  void select(int layer, const float* x, int64_t n_tokens, std::vector<int32_t>& active) override;

  // Compares every single-token selection with `oracle`'s; null stops measuring.
  void measure_against(NeuronSelector* oracle) { oracle_ = oracle; }
  const PredictorQuality& quality() const { return quality_; }
  const CompactPredictor& predictor() const { return predictor_; }

 private:
  CompactPredictor predictor_;
  ThreadPool& pool_;
  NeuronSelector* oracle_ = nullptr;
  PredictorQuality quality_;
  std::vector<PreparedInput> inputs_, hidden_inputs_;  // [token]
  std::vector<float> hidden_;
  std::vector<uint8_t> marked_;
  std::vector<int32_t> truth_;
};

}  // namespace flashlm
