// AdamW (Loshchilov & Hutter): Adam's moments with the weight decay applied to the weights
// directly. Shared by the predictor trainer and LoRA fine-tuning.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace flashlm {

struct AdamW {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.0f;
  std::vector<float> m, v;

  explicit AdamW(size_t n = 0, float decay = 0.0f) : weight_decay(decay), m(n), v(n) {}
  // One update of w (n values) with gradient g at step t (1, 2, ...) and learning rate lr.
  void step(float* w, const float* g, size_t n, float lr, int64_t t) {
    if (m.size() != n) {
      m.assign(n, 0.0f);
      v.assign(n, 0.0f);
    }
    const float c1 = 1.0f / (1.0f - std::pow(beta1, static_cast<float>(t)));
    const float c2 = 1.0f / (1.0f - std::pow(beta2, static_cast<float>(t)));
    for (size_t i = 0; i < n; ++i) {
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
      w[i] -= lr * ((m[i] * c1) / (std::sqrt(v[i] * c2) + eps) + weight_decay * w[i]);
    }
  }
  void step(std::vector<float>& w, const std::vector<float>& g, float lr, int64_t t) {
    step(w.data(), g.data(), w.size(), lr, t);
  }
};

}  // namespace flashlm
