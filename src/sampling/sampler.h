// Picks the next token from logits: greedy, or temperature + top-k + top-p with a seed.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace flashlm {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax)
  int top_k = 40;            // 0: no limit
  float top_p = 0.95f;       // 1: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params);
  int32_t sample(std::span<const float> logits);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

int32_t argmax(std::span<const float> logits);

}  // namespace flashlm
