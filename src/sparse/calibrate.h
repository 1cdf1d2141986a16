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

// Thresholds for options.levels from the activations of `text`.
SparsityProfile calibrate_thresholds(const Model& model, std::string_view text,
                                     const CalibrationOptions& options,
                                     const std::function<void(int, int)>& progress);

}  // namespace flashlm
