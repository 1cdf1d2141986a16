#include "sparse/predictor_training.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>

#include "common/adam.h"
#include "common/error.h"
#include "common/thread_pool.h"
#include "flash/loaded_model.h"
#include "quant/fp16.h"
#include "quant/kernels.h"

namespace flashlm {

PredictorSamples::PredictorSamples(int d_model, int d_ff)
    : d_model_(d_model), d_ff_(d_ff), words_((d_ff + 63) / 64), max_abs_(d_ff) {}

void PredictorSamples::add(const float* x, const float* activations, float threshold) {
  std::vector<uint8_t> mask(d_ff_);
  for (int i = 0; i < d_ff_; ++i) {
    mask[i] = std::abs(activations[i]) > threshold;
    max_abs_[i] = std::max(max_abs_[i], std::abs(activations[i]));
  }
  add_mask(x, mask.data());
}

void PredictorSamples::reserve(int64_t tokens) {
  x_.reserve(static_cast<size_t>(tokens) * d_model_);
  bits_.reserve(static_cast<size_t>(tokens) * words_);
}

uint64_t PredictorSamples::bytes_for(int64_t tokens, int d_model, int d_ff) {
  const uint64_t words = (static_cast<uint64_t>(d_ff) + 63) / 64;
  return static_cast<uint64_t>(tokens) * (d_model * sizeof(uint16_t) + words * sizeof(uint64_t)) +
         static_cast<uint64_t>(d_ff) * sizeof(float) * 2;
}

uint64_t predictor_training_bytes(const ModelConfig& c, int64_t tokens,
                                  const std::vector<int>& ranks, int threads) {
  uint64_t bytes = 0, largest = 0;
  for (int rank : ranks) {
    const uint64_t layer =
        (static_cast<uint64_t>(rank) * c.d_model + static_cast<uint64_t>(c.d_ff) * rank + c.d_ff) *
        sizeof(float);
    bytes += layer + PredictorSamples::bytes_for(tokens, c.d_model, c.d_ff);
    largest = std::max(largest, layer);
  }
  // Per layer in training: gradients, Adam's two moments and the batch's buffers.
  return bytes + static_cast<uint64_t>(std::max(threads, 1)) * 4 * largest;
}

void PredictorSamples::add_mask(const float* x, const uint8_t* mask) {
  for (int i = 0; i < d_model_; ++i) x_.push_back(float_to_fp16(x[i]));
  bits_.resize(bits_.size() + words_, 0);
  uint64_t* row = &bits_[static_cast<size_t>(n_) * words_];
  for (int i = 0; i < d_ff_; ++i) {
    if (mask[i]) row[i / 64] |= uint64_t{1} << (i % 64);
  }
  ++n_;
}

void PredictorSamples::input(int64_t row, float* out) const {
  const uint16_t* src = &x_[static_cast<size_t>(row) * d_model_];
  for (int i = 0; i < d_model_; ++i) out[i] = fp16_to_float(src[i]);
}

std::vector<int32_t> outlier_neurons(const PredictorSamples& samples, float pin_factor) {
  const std::vector<float>& peak = samples.max_abs();
  if (!(pin_factor > 0) || peak.empty()) return {};
  std::vector<float> sorted = peak;
  const size_t p99 = sorted.size() * 99 / 100;
  std::nth_element(sorted.begin(), sorted.begin() + p99, sorted.end());
  const float limit = pin_factor * sorted[p99];
  std::vector<int32_t> out;
  if (!(limit > 0)) return out;  // masks only, or a silent layer
  for (size_t i = 0; i < peak.size(); ++i) {
    if (peak[i] > limit) out.push_back(static_cast<int32_t>(i));
  }
  return out;
}

namespace {

float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

}  // namespace

LayerPredictor train_layer_predictor(const PredictorSamples& s, int rank,
                                     const PredictorTrainingOptions& o,
                                     LayerTrainingReport& report,
                                     const std::function<void()>& epoch_done) {
  const int d = s.d_model(), d_ff = s.d_ff();
  const int64_t n = s.size();
  const int64_t n_holdout = static_cast<int64_t>(o.holdout * static_cast<double>(n));
  const int64_t n_train = n - n_holdout;
  if (n_train < 1 || n_holdout < 2) {
    fail("{} samples are too few to train a predictor and hold out {:.0f}% of them; use more "
         "--tokens",
         n, 100 * o.holdout);
  }
  if (rank < 1) fail("predictor rank must be at least 1, got {}", rank);

  int64_t positives = 0;
  for (int64_t r = 0; r < n_train; ++r) {
    for (int i = 0; i < d_ff; ++i) positives += s.active(r, i);
  }
  const int64_t negatives = n_train * d_ff - positives;
  const float pos_weight =
      std::clamp(static_cast<float>(negatives) / static_cast<float>(std::max<int64_t>(positives, 1)),
                 0.01f, 100.0f);

  LayerPredictor p(rank, d, d_ff);
  std::mt19937_64 rng(o.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& w : p.a) w = normal(rng) / std::sqrt(static_cast<float>(d));
  for (float& w : p.b) w = normal(rng) / std::sqrt(static_cast<float>(rank));

  AdamW adam_a(p.a.size()), adam_b(p.b.size()), adam_bias(p.bias.size());
  std::vector<float> ga(p.a.size()), gb(p.b.size()), gbias(p.bias.size());
  std::vector<float> x(d), hidden(rank), dhidden(rank), z(d_ff);
  std::vector<int64_t> order(n_train);
  std::iota(order.begin(), order.end(), 0);
  int step = 0;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t start = 0; start < n_train; start += o.batch) {
      const int64_t end = std::min<int64_t>(start + o.batch, n_train);
      const float scale = 1.0f / static_cast<float>(end - start);
      std::fill(ga.begin(), ga.end(), 0.0f);
      std::fill(gb.begin(), gb.end(), 0.0f);
      std::fill(gbias.begin(), gbias.end(), 0.0f);
      for (int64_t k = start; k < end; ++k) {
        const int64_t row = order[k];
        s.input(row, x.data());
        p.logits(x.data(), hidden.data(), z.data());
        std::fill(dhidden.begin(), dhidden.end(), 0.0f);
        for (int i = 0; i < d_ff; ++i) {
          // d(weighted BCE)/dz: w+ (p - 1) for an active neuron, p for an inactive one.
          const float prob = sigmoid(z[i]);
          const float dz = scale * (s.active(row, i) ? pos_weight * (prob - 1.0f) : prob);
          gbias[i] += dz;
          axpy_f32(dz, hidden.data(), &gb[static_cast<size_t>(i) * rank], rank);
          axpy_f32(dz, &p.b[static_cast<size_t>(i) * rank], dhidden.data(), rank);
        }
        for (int j = 0; j < rank; ++j) {
          axpy_f32(dhidden[j], x.data(), &ga[static_cast<size_t>(j) * d], d);
        }
      }
      ++step;
      adam_a.step(p.a, ga, o.lr, step);
      adam_b.step(p.b, gb, o.lr, step);
      adam_bias.step(p.bias, gbias, o.lr, step);
    }
    if (epoch_done) epoch_done();
  }

  // Pinned neurons are always selected; the logits decide the rest.
  p.pinned = outlier_neurons(s, o.pin_factor);
  std::vector<uint8_t> pinned(d_ff, 0);
  for (int32_t i : p.pinned) pinned[i] = 1;

  // Decision threshold: sigmoid > 0.5 (logit 0), lowered if that misses more active neurons than
  // the target recall allows on the first half of the held-out tokens.
  const int64_t tune_end = n_train + n_holdout / 2;
  std::vector<float> positive_logits;
  for (int64_t row = n_train; row < tune_end; ++row) {
    s.input(row, x.data());
    p.logits(x.data(), hidden.data(), z.data());
    for (int i = 0; i < d_ff; ++i) {
      if (s.active(row, i) && !pinned[i]) positive_logits.push_back(z[i]);
    }
  }
  p.decision = 0.0f;
  if (!positive_logits.empty()) {
    const size_t k = static_cast<size_t>((1.0f - o.target_recall) *
                                         static_cast<float>(positive_logits.size()));
    std::nth_element(positive_logits.begin(), positive_logits.begin() + k, positive_logits.end());
    p.decision = std::min(0.0f, std::nextafter(positive_logits[k],
                                                -std::numeric_limits<float>::infinity()));
  }

  int64_t tp = 0, fp = 0, fn = 0;
  for (int64_t row = tune_end; row < n; ++row) {
    s.input(row, x.data());
    p.logits(x.data(), hidden.data(), z.data());
    for (int i = 0; i < d_ff; ++i) {
      const bool predicted = pinned[i] || z[i] > p.decision, truth = s.active(row, i);
      tp += predicted && truth;
      fp += predicted && !truth;
      fn += !predicted && truth;
    }
  }
  const double measured = static_cast<double>(n - tune_end) * d_ff;
  report.active_share = static_cast<float>((tp + fn) / measured);
  report.predicted_share = static_cast<float>((tp + fp) / measured);
  report.recall = tp + fn > 0 ? static_cast<float>(tp) / static_cast<float>(tp + fn) : 1.0f;
  report.precision = tp + fp > 0 ? static_cast<float>(tp) / static_cast<float>(tp + fp) : 1.0f;
  report.pinned = static_cast<int>(p.pinned.size());
  p.recall = report.recall;
  p.precision = report.precision;
  return p;
}

ActivationPredictor train_predictor(const std::vector<PredictorSamples>& samples,
                                    const std::vector<int>& ranks, float sparsity,
                                    const PredictorTrainingOptions& options, ThreadPool& pool,
                                    std::vector<LayerTrainingReport>& reports,
                                    const std::function<void(int, int)>& progress) {
  if (ranks.size() != samples.size()) {
    fail("internal error: {} ranks for {} layers", ranks.size(), samples.size());
  }
  const int n_layers = static_cast<int>(samples.size());
  ActivationPredictor predictor;
  predictor.sparsity = sparsity;
  predictor.layers.resize(n_layers);
  reports.assign(n_layers, {});
  std::mutex mutex;
  int done = 0;
  const int total = n_layers * options.epochs;
  pool.parallel_for(n_layers, [&](int64_t begin, int64_t end, int) {
    for (int64_t l = begin; l < end; ++l) {
      PredictorTrainingOptions o = options;
      o.seed = options.seed + static_cast<uint64_t>(l);
      predictor.layers[l] =
          train_layer_predictor(samples[l], ranks[l], o, reports[l], [&] {
            std::lock_guard lock(mutex);
            ++done;
            if (progress) progress(done, total);
          });
    }
  });
  return predictor;
}

std::vector<PredictorSamples> collect_predictor_samples(
    const Model& model, std::string_view text, const CalibrationOptions& options,
    const std::vector<float>& thresholds, const std::function<void(int, int)>& progress) {
  const ModelConfig& c = model.config;
  if (thresholds.size() != static_cast<size_t>(c.n_layers)) {
    fail("internal error: {} thresholds for {} layers", thresholds.size(), c.n_layers);
  }
  std::vector<PredictorSamples> samples(c.n_layers, PredictorSamples(c.d_model, c.d_ff));
  for (PredictorSamples& s : samples) s.reserve(options.max_tokens);
  run_calibration_text(
      model, text, options,
      [&](int layer, const float* x, const float* activations) {
        samples[layer].add(x, activations, thresholds[layer]);
      },
      progress);
  return samples;
}

}  // namespace flashlm
