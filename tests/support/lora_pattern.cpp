#include "support/lora_pattern.h"

#include <cmath>

namespace flashlm::testing {

LoraAdapter lora_pattern(const ModelConfig& config, const LoraPatternSpec& spec) {
  LoraAdapter a;
  a.architecture = config.architecture;
  a.alpha = spec.alpha;
  a.layers.resize(config.n_layers);
  std::vector<LoraTarget> targets = spec.targets;
  if (targets.empty()) targets = parse_lora_targets("all");
  for (int l = 0; l < config.n_layers; ++l) {
    for (LoraTarget target : targets) {
      if (target == LoraTarget::FfnGate && !config.ffn_gated) continue;
      const int t = static_cast<int>(target);
      LoraPair& p = a.pair(l, target);
      p.rank = spec.rank;
      p.in = lora_target_cols(config.lora_shapes(), target);
      p.out = lora_target_rows(config.lora_shapes(), target);
      p.a.resize(static_cast<size_t>(p.rank * p.in));
      p.b.resize(static_cast<size_t>(p.out * p.rank));
      for (int64_t r = 0; r < p.rank; ++r) {
        for (int64_t i = 0; i < p.in; ++i) {
          p.a[r * p.in + i] = static_cast<float>(
              spec.amplitude * std::sin(0.61 * i + 1.7 * r + 0.37 * l + 1.1 * t + 0.5));
        }
      }
      for (int64_t o = 0; o < p.out; ++o) {
        for (int64_t r = 0; r < p.rank; ++r) {
          p.b[o * p.rank + r] = static_cast<float>(
              spec.amplitude * std::cos(0.43 * o + 2.3 * r + 0.29 * l + 0.7 * t + 0.25));
        }
      }
    }
  }
  return a;
}

}  // namespace flashlm::testing
