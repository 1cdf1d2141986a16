// The paper's activation predictors: per layer a small low-rank network that guesses, from the
// FFN input x (after the FFN norm), which neurons will be active (|h| above the layer's
// threshold), so that only those are read from flash:
//
//   logits = B (A x) + bias,   A: rank x d_model,  B: d_ff x rank
//
// A neuron is predicted active when its logit exceeds the layer's decision threshold, which
// training tunes on held-out tokens to keep a target recall (sigmoid(logit) > 0.5 is logit > 0).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace flashlm {

class GgufFile;
class GgufWriter;

struct LayerPredictor {
  int rank = 0, d_model = 0, d_ff = 0;
  std::vector<float> a;     // rank x d_model, row-major
  std::vector<float> b;     // d_ff x rank, row-major
  std::vector<float> bias;  // d_ff
  float decision = 0;       // logit threshold; -infinity predicts every neuron
  // Neurons selected whatever the logits say: the few whose rare activations are orders of
  // magnitude above the rest ("massive activations", e.g. 3000 against a typical peak of 8 in
  // SmolLM2's layer 11). A low-rank predictor misses some of those tokens, and one miss there
  // costs more than all the other misses together; selecting them always costs a few bundles.
  std::vector<int32_t> pinned;  // ascending
  // Held-out quality measured by the trainer (kept in the file for reports).
  float recall = 0, precision = 0;

  LayerPredictor() = default;
  LayerPredictor(int rank_, int d_model_, int d_ff_);
  // logits (d_ff) of one input; `hidden` needs rank floats.
  void logits(const float* x, float* hidden, float* out) const;
  // Logits of neurons [begin, end) from the hidden vector A x.
  void logits_from_hidden(const float* hidden, int begin, int end, float* out) const;
};

// All layers' predictors for one sparsity level.
struct ActivationPredictor {
  float sparsity = 0;  // the level (of the sparsity file's thresholds) they were trained for
  std::vector<LayerPredictor> layers;

  // Adds the tensors and metadata for this level to a sparsity file being written.
  void write_to(GgufWriter& writer) const;
  // The predictor for `sparsity` in a sparsity file, if it has one; shapes are checked against
  // the model's.
  static std::optional<ActivationPredictor> from_gguf(const GgufFile& file, float sparsity,
                                                      int n_layers, int d_model, int d_ff);
  // Levels that have predictors in the file.
  static std::vector<float> levels_in(const GgufFile& file);
};

// Adds (or replaces) `predictor`'s level in the sparsity file at `path`, keeping its thresholds
// and the predictors of other levels.
void save_predictor(const std::string& path, const ActivationPredictor& predictor);

}  // namespace flashlm
