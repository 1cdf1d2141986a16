// Training-free activation sparsity for any FFN (CATS-style): a neuron counts as inactive for a
// token when its activation act(gate . x) is small in magnitude, below a per-layer threshold
// chosen on calibration text so that a target share of neurons is inactive. ReLU-family models
// are the special case of threshold 0.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace flashlm {

class GgufFile;
class GgufWriter;

// Thresholds for several target sparsities, per layer; stored in the sparsity file beside a
// .flm model (MODEL.flm.sparse, GGUF), which also holds the predictors.
struct SparsityProfile {
  std::vector<float> levels;                   // target shares of inactive neurons, ascending
  std::vector<std::vector<float>> thresholds;  // [level][layer]

  // The thresholds of `level` (which must be one of `levels`).
  const std::vector<float>& at(float level) const;

  void write_to(GgufWriter& writer) const;
  static SparsityProfile from_gguf(const GgufFile& file, int n_layers);
};

// Reservoir samples of |activation| per layer, from which thresholds are read as quantiles.
class ActivationSampler {
 public:
  ActivationSampler(int n_layers, size_t samples_per_layer, uint64_t seed = 1);
  void add(int layer, const float* activations, int64_t n);
  // Room for `values` samples per layer (at most the capacity), allocated now.
  void reserve(size_t values);
  SparsityProfile profile(const std::vector<float>& levels) const;

 private:
  std::vector<std::vector<float>> samples_;
  std::vector<uint64_t> seen_;
  size_t capacity_;
  std::mt19937_64 rng_;
};

// Default sparsity-file path for a model.
std::string sparsity_file_for(const std::string& model_path);

}  // namespace flashlm
