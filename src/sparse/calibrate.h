// Calibration: run the dense model over calibration text and look at every FFN neuron's
// activation, to choose the per-layer thresholds of each target sparsity and to record what
// the predictors learn from (the FFN input and which neurons were active).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "sparse/sparsity.h"

namespace flashlm {

struct Model;
struct ModelConfig;
struct MemoryPlan;

struct CalibrationOptions {
  int threads = 0;
  int max_tokens = 4096;     // calibration tokens to run
  int segment_tokens = 256;  // the text is run in independent segments of this many tokens
  std::vector<float> levels = {0.3f, 0.5f, 0.7f, 0.8f, 0.9f};
  size_t samples_per_layer = size_t{1} << 21;
  // The FFN's memory plan (naive or hybrid under a budget); null: every bundle in DRAM.
  const MemoryPlan* ffn_plan = nullptr;
};

// Observes each layer's FFN input and the activations of all its neurons, token by token.
using ActivationObserver =
    std::function<void(int layer, const float* x, const float* activations)>;

// Runs `text` (tokenized, cut into segments) through the dense .flm model, calling `observe`
// for every layer and token. Returns the tokens run.
int64_t run_calibration_text(const Model& model, std::string_view text,
                             const CalibrationOptions& options, const ActivationObserver& observe,
                             const std::function<void(int, int)>& progress);

// The activation samples calibrate_thresholds keeps, for the memory budget.
uint64_t calibration_sample_bytes(const ModelConfig& config, const CalibrationOptions& options);

// How much each FFN neuron contributes to its layer's output on calibration text.
struct NeuronImportance {
  // importance[l][i]: the mean over the calibration tokens of |h_i| * ||column i of W_down||_2
  // (h_i = act(gate_i . x) * (up_i . x)), the size of neuron i's term in the layer's output.
  std::vector<std::vector<double>> importance;
  // order[l][j]: layer l's j-th most important neuron (ties: the lower index first), a
  // permutation for ConvertOptions::neuron_order.
  std::vector<std::vector<int32_t>> order;
  int64_t tokens = 0;  // calibration tokens run

  // The share (0..1) of the importance summed over all layers that the first `fraction` of
  // each layer's neurons in `order` carry.
  double share_of_first(double fraction) const;
};

// Ranks the neurons of every layer of the dense .flm model by importance on `text`. The neuron
// indices are the file's bundle indices (for a file in natural order, the GGUF's).
NeuronImportance rank_neurons_by_importance(const Model& model, std::string_view text,
                                            const CalibrationOptions& options,
                                            const std::function<void(int, int)>& progress);

// Thresholds for options.levels from the activations of `text`.
SparsityProfile calibrate_thresholds(const Model& model, std::string_view text,
                                     const CalibrationOptions& options,
                                     const std::function<void(int, int)>& progress);

}  // namespace flashlm
