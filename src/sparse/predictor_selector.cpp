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
  const CompactLayerPredictor& p = predictor_.layers[layer];
  marked_.assign(p.d_ff, 0);
  for (int32_t i : p.pinned) marked_[i] = 1;
  if (static_cast<int64_t>(inputs_.size()) < n_tokens) {
    inputs_.resize(n_tokens);
    hidden_inputs_.resize(n_tokens);
  }
  hidden_.resize(static_cast<size_t>(p.rank) * n_tokens);
  // A x is small (rank x d_model); the d_ff x rank half is split across the pool.
  for (int64_t t = 0; t < n_tokens; ++t) {
    inputs_[t].prepare(CompactLayerPredictor::kType, x + t * p.d_model, p.d_model);
  }
  p.hidden(inputs_.data(), n_tokens, hidden_.data());
  for (int64_t t = 0; t < n_tokens; ++t) {
    hidden_inputs_[t].prepare(CompactLayerPredictor::kType, &hidden_[t * p.rank], p.rank);
  }
  constexpr int kNeurons = 64, kTokens = 16;  // per pass: the logits fit in 4 KiB of stack
  pool_.parallel_for(
      p.d_ff,
      [&](int64_t begin, int64_t end, int) {
        float logits[kTokens * kNeurons];
        for (int64_t i0 = begin; i0 < end; i0 += kNeurons) {
          const int i1 = static_cast<int>(std::min<int64_t>(i0 + kNeurons, end));
          for (int64_t t0 = 0; t0 < n_tokens; t0 += kTokens) {
            const int64_t tokens = std::min<int64_t>(kTokens, n_tokens - t0);
            p.logits(&hidden_inputs_[t0], tokens, static_cast<int>(i0), i1, logits, kNeurons);
            for (int64_t t = 0; t < tokens; ++t) {
              for (int i = static_cast<int>(i0); i < i1; ++i) {
                if (logits[t * kNeurons + i - i0] > p.decision) marked_[i] = 1;
              }
            }
          }
        }
      },
      kNeurons);
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
