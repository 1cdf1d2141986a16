#include "sparse/predictor_selector.h"

#include <algorithm>

#include "common/thread_pool.h"
#include "quant/kernels.h"

namespace flashlm {

double PredictorQuality::recall() const {
  const uint64_t truth = true_positives + false_negatives;
  return truth > 0 ? static_cast<double>(true_positives) / static_cast<double>(truth) : 1.0;
}

double PredictorQuality::precision() const {
  const uint64_t predicted = true_positives + false_positives;
  return predicted > 0 ? static_cast<double>(true_positives) / static_cast<double>(predicted)
                       : 1.0;
}

PredictorSelector::PredictorSelector(ActivationPredictor predictor, ThreadPool& pool)
    : predictor_(std::move(predictor)), pool_(pool) {}

void PredictorSelector::select(int layer, const float* x, int64_t n_tokens,
                               std::vector<int32_t>& active) {
  const LayerPredictor& p = predictor_.layers[layer];
  marked_.assign(p.d_ff, 0);
  for (int32_t i : p.pinned) marked_[i] = 1;
  hidden_.resize(static_cast<size_t>(p.rank) * n_tokens);
  // A x is small (rank x d_model); the d_ff x rank half is split across the pool.
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* xt = x + t * p.d_model;
    for (int j = 0; j < p.rank; ++j) {
      hidden_[t * p.rank + j] = dot_f32(&p.a[static_cast<size_t>(j) * p.d_model], xt, p.d_model);
    }
  }
  pool_.parallel_for(
      p.d_ff,
      [&](int64_t begin, int64_t end, int) {
        float logits[64];
        for (int64_t i0 = begin; i0 < end; i0 += 64) {
          const int i1 = static_cast<int>(std::min<int64_t>(i0 + 64, end));
          for (int64_t t = 0; t < n_tokens; ++t) {
            p.logits_from_hidden(&hidden_[t * p.rank], static_cast<int>(i0), i1, logits);
            for (int i = static_cast<int>(i0); i < i1; ++i) {
              if (logits[i - i0] > p.decision) marked_[i] = 1;
            }
          }
        }
      },
      64);
  active.clear();
  for (int i = 0; i < p.d_ff; ++i) {
    if (marked_[i]) active.push_back(i);
  }

  // Measured on single-token steps only (decode), as the paper does: the union over a prompt
  // batch would flatter recall.
  if (!oracle_ || n_tokens != 1) return;
  oracle_->select(layer, x, 1, truth_);
  uint64_t hits = 0;
  for (int32_t i : truth_) hits += marked_[i];
  quality_.true_positives += hits;
  quality_.false_negatives += truth_.size() - hits;
  quality_.false_positives += active.size() - hits;
}

}  // namespace flashlm
