#include "sparse/calibrate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "common/error.h"
#include "common/thread_pool.h"
#include "flash/loaded_model.h"
#include "flash/flash_embedding.h"
#include "sparse/flash_ffn.h"
#include "flash/memory_plan.h"
#include "flash/streamed_weights.h"
#include "model/transformer.h"
#include "quant/reference.h"

namespace flashlm {
namespace {

// The dense FFN with a look at every neuron's activation on the way.
class ObservedFeedForward : public FeedForward {
 public:
  ObservedFeedForward(FlashFeedForward& dense, int d_model, int d_ff,
                      const ActivationObserver& observe)
      : dense_(dense), d_model_(d_model), activations_(d_ff), observe_(observe) {}

  void forward(const FfnStep& step, const float* x, float* out) override {
    dense_.forward(step, x, out);
    for (int64_t t = 0; t < step.n_tokens; ++t) {
      dense_.activations(step.layer, x + t * d_model_, activations_.data());
      observe_(step.layer, x + t * d_model_, activations_.data());
    }
  }

 private:
  FlashFeedForward& dense_;
  int d_model_;
  std::vector<float> activations_;
  const ActivationObserver& observe_;
};

// ||column i of W_down||_2 for every neuron i of `layer`, from the down part of its bundle.
std::vector<double> down_column_norms(const FlashModelFile& flm, int layer) {
  const BundleLayout& b = flm.layout();
  const std::vector<uint8_t> bundles = flm.read_layer(layer);
  std::vector<double> norms(flm.d_ff());
  std::vector<float> column(b.d_model);
  for (int i = 0; i < flm.d_ff(); ++i) {
    dequantize_row_reference(b.down_type, bundles.data() + size_t(i) * b.stride + b.down_offset(),
                             column.data(), b.d_model);
    double sum = 0;
    for (float v : column) sum += double{v} * v;
    norms[i] = std::sqrt(sum);
  }
  return norms;
}

}  // namespace

int64_t run_calibration_text(const Model& model, std::string_view text,
                             const CalibrationOptions& options, const ActivationObserver& observe,
                             const std::function<void(int, int)>& progress) {
  if (!model.flash) {
    fail("calibration runs on the flash layout; convert the model first: flashlm convert -m {} "
         "-o MODEL.flm",
         model.file->path());
  }
  // Only the first max_tokens are run: tokenize a prefix that holds them (tokens are far
  // shorter than 16 bytes), not a whole long file, whose pieces would outgrow the budget.
  const size_t prefix = static_cast<size_t>(options.max_tokens) * 16;
  std::vector<int32_t> tokens = model.tokenizer.encode(
      std::string_view(text).substr(0, prefix), model.tokenizer.add_bos(), false);
  if (static_cast<int64_t>(tokens.size()) < options.max_tokens && text.size() > prefix) {
    tokens = model.tokenizer.encode(text, model.tokenizer.add_bos(), false);
  }
  const int64_t n = std::min<int64_t>(options.max_tokens, static_cast<int64_t>(tokens.size()));
  if (static_cast<int64_t>(tokens.size()) < options.segment_tokens) {
    fail("the calibration text has {} tokens; at least {} are needed", tokens.size(),
         options.segment_tokens);
  }
  if (n < options.segment_tokens) {
    fail("--tokens {} is less than one calibration segment of {} tokens; pass --tokens {} or more",
         options.max_tokens, options.segment_tokens, options.segment_tokens);
  }
  ThreadPool pool(options.threads > 0 ? options.threads : ThreadPool::default_threads());
  const FlashModelFile& flm = *model.flash;
  FlashFeedForward dense(
      flm, model.config,
      options.ffn_plan ? *options.ffn_plan : plan_memory(flm, FfnMode::Dense, ~uint64_t{0} / 4),
      IoBackend::Auto, pool);
  ObservedFeedForward observed(dense, model.config.d_model, model.config.d_ff, observe);
  TransformerOptions t{.context_size = options.segment_tokens, .max_batch = 32};
  // A budget that leaves the embedding table, the attention or the output head on flash.
  std::optional<FlashWeightSources> sources;
  if (options.ffn_plan) {
    sources.emplace(*model.file, model.weights, *options.ffn_plan, IoBackend::Auto, pool);
    t.embedding = sources->embedding.get();
    t.weight_stream = sources->streamed.get();
  }
  Transformer transformer(model.config, model.weights, observed, pool, t);
  const int segments = static_cast<int>(n / options.segment_tokens);
  for (int s = 0; s < segments; ++s) {
    transformer.truncate(0);
    transformer.forward(std::span(tokens).subspan(static_cast<size_t>(s) * options.segment_tokens,
                                                  options.segment_tokens));
    if (progress) progress(s + 1, segments);
  }
  return static_cast<int64_t>(segments) * options.segment_tokens;
}

uint64_t calibration_sample_bytes(const ModelConfig& c, const CalibrationOptions& options) {
  const uint64_t per_layer = std::min<uint64_t>(
      options.samples_per_layer, static_cast<uint64_t>(options.max_tokens) * c.d_ff);
  return static_cast<uint64_t>(c.n_layers) * per_layer * sizeof(float);
}

double NeuronImportance::share_of_first(double fraction) const {
  double first = 0, all = 0;
  for (size_t l = 0; l < order.size(); ++l) {
    const auto n = static_cast<size_t>(std::llround(fraction * static_cast<double>(order[l].size())));
    for (size_t j = 0; j < order[l].size(); ++j) {
      const double v = importance[l][static_cast<size_t>(order[l][j])];
      all += v;
      if (j < n) first += v;
    }
  }
  return all > 0 ? first / all : 0;
}

NeuronImportance rank_neurons_by_importance(const Model& model, std::string_view text,
                                            const CalibrationOptions& options,
                                            const std::function<void(int, int)>& progress) {
  if (!model.flash) {
    fail("ranking neurons runs on the flash layout; convert the model first: flashlm convert -m "
         "{} -o MODEL.flm",
         model.file->path());
  }
  const int layers = model.config.n_layers, d_ff = model.config.d_ff;
  NeuronImportance r;
  r.importance.assign(layers, std::vector<double>(d_ff, 0.0));
  r.tokens = run_calibration_text(
      model, text, options,
      [&](int layer, const float*, const float* activations) {
        std::vector<double>& sum = r.importance[layer];
        for (int i = 0; i < d_ff; ++i) sum[i] += std::abs(double{activations[i]});
      },
      progress);
  r.order.resize(layers);
  for (int l = 0; l < layers; ++l) {
    const std::vector<double> norms = down_column_norms(*model.flash, l);
    for (int i = 0; i < d_ff; ++i) {
      r.importance[l][i] = r.importance[l][i] / static_cast<double>(r.tokens) * norms[i];
    }
    std::vector<int32_t>& order = r.order[l];
    order.resize(d_ff);
    std::iota(order.begin(), order.end(), 0);
    const std::vector<double>& imp = r.importance[l];
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return imp[a] != imp[b] ? imp[a] > imp[b] : a < b;
    });
  }
  return r;
}

SparsityProfile calibrate_thresholds(const Model& model, std::string_view text,
                                     const CalibrationOptions& options,
                                     const std::function<void(int, int)>& progress) {
  ActivationSampler sampler(model.config.n_layers, options.samples_per_layer);
  const int d_ff = model.config.d_ff;
  sampler.reserve(static_cast<size_t>(options.max_tokens) * d_ff);
  run_calibration_text(
      model, text, options,
      [&](int layer, const float*, const float* activations) {
        sampler.add(layer, activations, d_ff);
      },
      progress);
  return sampler.profile(options.levels);
}

}  // namespace flashlm
