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

#include "quant/kernels.h"
#include "quant/types.h"

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

// A layer's predictor as inference holds it: A and B in F16 (half the F32 memory), evaluated
// with the kernels; the bias stays F32. Training and the sparsity file keep the F32
// LayerPredictor. F16 over Q8_0, measured on the real models' shapes: as fast as F32 and 0.01%
// of decisions flipped, where Q8_0 (a quarter of F32) flips 0.3% and is slower for one token.
struct CompactLayerPredictor {
  static constexpr TensorType kType = TensorType::F16;
  int rank = 0, d_model = 0, d_ff = 0;
  std::vector<uint16_t> a;  // rank x d_model, row-major
  std::vector<uint16_t> b;  // d_ff x rank, row-major
  std::vector<float> bias;
  float decision = 0;
  std::vector<int32_t> pinned;

  explicit CompactLayerPredictor(const LayerPredictor& p);
  // hidden[t * rank + j] = (A x_t)_j for n inputs prepared for kType.
  void hidden(const PreparedInput* xs, int64_t n, float* hidden) const;
  // out[t * ldy + i - begin] = logit of neuron i in [begin, end) for n hidden vectors prepared
  // for kType.
  void logits(const PreparedInput* hidden, int64_t n, int begin, int end, float* out,
              int64_t ldy) const;
  uint64_t bytes() const;
  // bytes() of the compact form of `p`, without making it.
  static uint64_t bytes_for(const LayerPredictor& p);
};

struct CompactPredictor {
  float sparsity = 0;
  std::vector<CompactLayerPredictor> layers;

  // Consumes `p` layer by layer (each F32 layer freed once compacted), so that making it holds
  // at most the F32 predictor plus one compact layer.
  explicit CompactPredictor(ActivationPredictor&& p);
  uint64_t bytes() const;
  static uint64_t bytes_for(const ActivationPredictor& p);
};

// Adds (or replaces) `predictor`'s level in the sparsity file at `path`, keeping its thresholds
// and the predictors of other levels.
void save_predictor(const std::string& path, const ActivationPredictor& predictor);

}  // namespace flashlm
