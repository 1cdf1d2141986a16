// Training the activation predictors (sparse/predictor.h) on what the dense model does with
// calibration text: per layer, the FFN inputs x and which neurons were active at the chosen
// sparsity's thresholds. Balanced binary cross-entropy (positives weighted by the share of
// negatives, as recall matters more than precision: a missed neuron changes the output, an
// extra one only costs a read), Adam, mini-batches; layers train in parallel.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "sparse/calibrate.h"
#include "sparse/predictor.h"

namespace flashlm {

class ThreadPool;
struct Model;

// One layer's training data. Inputs are kept as F16 and masks as bits so that a few thousand
// tokens of a large model fit in memory.
class PredictorSamples {
 public:
  PredictorSamples(int d_model, int d_ff);
  // Records one token: its FFN input and which neurons have |activation| > threshold.
  void add(const float* x, const float* activations, float threshold);
  // Records one token with the mask given directly (mask[i] != 0: neuron i active).
  void add_mask(const float* x, const uint8_t* mask);
  // Room for `tokens` tokens, allocated now (no growth by doubling past the budget).
  void reserve(int64_t tokens);
  static uint64_t bytes_for(int64_t tokens, int d_model, int d_ff);

  int64_t size() const { return n_; }
  int d_model() const { return d_model_; }
  int d_ff() const { return d_ff_; }
  void input(int64_t row, float* out) const;
  // Per neuron, the largest |activation| that add() saw (zero where only masks were given).
  const std::vector<float>& max_abs() const { return max_abs_; }
  bool active(int64_t row, int neuron) const {
    return (bits_[static_cast<size_t>(row) * words_ + neuron / 64] >> (neuron % 64)) & 1;
  }

 private:
  int d_model_, d_ff_, words_;
  int64_t n_ = 0;
  std::vector<uint16_t> x_;
  std::vector<uint64_t> bits_;
  std::vector<float> max_abs_;
};

struct PredictorTrainingOptions {
  int epochs = 10;
  int batch = 64;
  float lr = 1e-3f;
  float holdout = 0.1f;         // share of tokens (the last ones) kept out of training
  float target_recall = 0.95f;  // the decision threshold is lowered until held-out recall reaches it
  // A neuron whose largest |activation| in the training tokens exceeds this many times the
  // layer's 99th percentile of per-neuron maxima is pinned (always selected); 0 pins none.
  float pin_factor = 4.0f;
  uint64_t seed = 1;
};

// The neurons `samples` shows with outlying peaks (see PredictorTrainingOptions::pin_factor).
std::vector<int32_t> outlier_neurons(const PredictorSamples& samples, float pin_factor);

// Held-out figures of one layer: the first half of the held-out tokens tunes the decision
// threshold, the second half measures recall and precision.
struct LayerTrainingReport {
  float active_share = 0;  // share of active neurons in the measured tokens
  float recall = 0, precision = 0;
  float predicted_share = 0;  // share of neurons the predictor selects
  int pinned = 0;             // neurons always selected (LayerPredictor::pinned)
};

LayerPredictor train_layer_predictor(const PredictorSamples& samples, int rank,
                                     const PredictorTrainingOptions& options,
                                     LayerTrainingReport& report,
                                     const std::function<void()>& epoch_done = {});

// All layers, in parallel on `pool`; ranks[l] per layer. progress(done, total) counts epochs
// of all layers.
ActivationPredictor train_predictor(const std::vector<PredictorSamples>& samples,
                                    const std::vector<int>& ranks, float sparsity,
                                    const PredictorTrainingOptions& options, ThreadPool& pool,
                                    std::vector<LayerTrainingReport>& reports,
                                    const std::function<void(int, int)>& progress = {});

// What train-predictor holds besides the model, for the memory budget: every layer's samples
// of `tokens` tokens, the F32 predictors of `ranks`, and the Adam state and gradients of the
// layers that `threads` train at once.
uint64_t predictor_training_bytes(const ModelConfig& config, int64_t tokens,
                                  const std::vector<int>& ranks, int threads);

// Runs the dense model over `text` and records every layer's samples at `thresholds`.
std::vector<PredictorSamples> collect_predictor_samples(
    const Model& model, std::string_view text, const CalibrationOptions& options,
    const std::vector<float>& thresholds, const std::function<void(int, int)>& progress);

}  // namespace flashlm
