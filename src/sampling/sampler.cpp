#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace flashlm {

int32_t argmax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

Sampler::Sampler(SamplingParams params) : params_(params), rng_(params.seed) {
  if (params.temperature < 0 || !std::isfinite(params.temperature)) {
    fail("temperature must be 0 (greedy) or positive, got {}", params.temperature);
  }
  if (params.top_k < 0) fail("top-k must be 0 (off) or positive, got {}", params.top_k);
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    fail("top-p must be in (0, 1], got {}", params.top_p);
  }
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (params_.temperature == 0.0f) return argmax(logits);
  candidates_.clear();
  for (size_t i = 0; i < logits.size(); ++i) {
    candidates_.emplace_back(logits[i], static_cast<int32_t>(i));
  }
  const size_t k = params_.top_k > 0 ? std::min<size_t>(params_.top_k, candidates_.size())
                                     : candidates_.size();
  std::partial_sort(candidates_.begin(), candidates_.begin() + k, candidates_.end(),
                    [](const auto& a, const auto& b) { return a.first > b.first; });
  candidates_.resize(k);
  // Softmax at the temperature, then keep the smallest prefix whose mass reaches top_p.
  const float max = candidates_[0].first;
  double total = 0;
  for (auto& [value, id] : candidates_) {
    value = std::exp((value - max) / params_.temperature);
    total += value;
  }
  double mass = 0;
  size_t keep = 0;
  while (keep < candidates_.size()) {
    mass += candidates_[keep++].first / total;
    if (mass >= params_.top_p) break;
  }
  std::uniform_real_distribution<double> uniform(0.0, mass);
  double r = uniform(rng_) * total;
  for (size_t i = 0; i < keep; ++i) {
    r -= candidates_[i].first;
    if (r <= 0) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

}  // namespace flashlm
