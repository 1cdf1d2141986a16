// Activation predictors: training on a known mask, storage in the sparsity file, and sparse
// mode against dense evaluation at the same thresholds.
#include "sparse/predictor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <random>

#include "common/error.h"
#include "common/thread_pool.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "sparse/calibrate.h"
#include "sparse/predictor_selector.h"
#include "sparse/predictor_training.h"
#include "sparse/sparse_ffn.h"
#include "sparse/streamed_ffn.h"
#include "sparse/windowed_ffn.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

TEST(PredictorTraining, LearnsALowRankMask) {
  // active_i = (U V x)_i > 0 with U V of rank 4: a rank-8 predictor can learn it exactly.
  const int d_model = 32, d_ff = 64, true_rank = 4;
  const auto u = testing::random_floats(d_ff * true_rank, 1);
  const auto v = testing::random_floats(true_rank * d_model, 2);
  PredictorSamples samples(d_model, d_ff);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> x(d_model), vx(true_rank);
  std::vector<uint8_t> mask(d_ff);
  int64_t active = 0;
  for (int n = 0; n < 3000; ++n) {
    for (float& xi : x) xi = normal(rng);
    for (int j = 0; j < true_rank; ++j) {
      vx[j] = 0;
      for (int k = 0; k < d_model; ++k) vx[j] += v[j * d_model + k] * x[k];
    }
    for (int i = 0; i < d_ff; ++i) {
      float wx = 0;
      for (int j = 0; j < true_rank; ++j) wx += u[i * true_rank + j] * vx[j];
      mask[i] = wx > 0;
      active += mask[i];
    }
    samples.add_mask(x.data(), mask.data());
  }
  ASSERT_GT(active, 3000 * d_ff / 4);  // a real mix of both classes

  PredictorTrainingOptions options;
  options.epochs = 15;
  options.batch = 32;
  options.lr = 1e-2f;
  options.target_recall = 0.99f;
  LayerTrainingReport report;
  const LayerPredictor p = train_layer_predictor(samples, 8, options, report);
  EXPECT_GT(report.recall, 0.95f);
  // Predicting every neuron would also reach that recall, at precision ~0.5.
  EXPECT_GT(report.precision, 0.85f);
  EXPECT_EQ(p.recall, report.recall);
}

TEST(PredictorTraining, PinsTheNeuronsWithMassiveActivations) {
  // Neuron 7 is usually like the rest but on 1% of the tokens reaches 500: the massive
  // activations that a low-rank predictor misses. Neuron 3 peaks at 3x the others: not pinned.
  const int d_model = 16, d_ff = 400;
  PredictorSamples samples(d_model, d_ff);
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> x(d_model), act(d_ff);
  for (int n = 0; n < 1000; ++n) {
    for (float& xi : x) xi = normal(rng);
    for (float& a : act) a = std::clamp(normal(rng), -3.0f, 3.0f);
    act[3] *= 3;
    if (n % 100 == 42) act[7] = -500;
    samples.add(x.data(), act.data(), 1.0f);
  }
  EXPECT_EQ(outlier_neurons(samples, 4.0f), std::vector<int32_t>{7});
  EXPECT_EQ(outlier_neurons(samples, 2.0f), (std::vector<int32_t>{3, 7}));
  EXPECT_TRUE(outlier_neurons(samples, 0.0f).empty());

  PredictorTrainingOptions options;
  options.epochs = 1;
  LayerTrainingReport report;
  const LayerPredictor p = train_layer_predictor(samples, 4, options, report);
  EXPECT_EQ(p.pinned, std::vector<int32_t>{7});
  EXPECT_EQ(report.pinned, 1);

  // Masks alone carry no magnitudes: nothing to pin.
  PredictorSamples masks(d_model, d_ff);
  std::vector<uint8_t> mask(d_ff, 1);
  masks.add_mask(x.data(), mask.data());
  EXPECT_TRUE(outlier_neurons(masks, 4.0f).empty());
}

TEST(PredictorSelector, AlwaysSelectsThePinnedNeurons) {
  ThreadPool pool(2);
  ActivationPredictor predictor;
  predictor.sparsity = 0.5f;
  LayerPredictor layer(2, 8, 100);  // all-zero weights: every logit is 0
  layer.decision = 1.0f;            // so the logits select nothing
  layer.pinned = {5, 61};
  predictor.layers.push_back(layer);
  PredictorSelector selector(predictor, pool);
  const std::vector<float> x(8, 1.0f);
  std::vector<int32_t> active;
  selector.select(0, x.data(), 1, active);
  EXPECT_EQ(active, (std::vector<int32_t>{5, 61}));
}

TEST(PredictorSelector, CompactPredictorSelectsAsTheF32OneExceptAtNearTies) {
  // SmolLM2's shape with a rank-64 predictor, scaled so that A x and the logits spread about 1,
  // and a decision that selects about a third: many decisions close to the threshold.
  const int d_model = 576, d_ff = 1536, rank = 64;
  LayerPredictor layer(rank, d_model, d_ff);
  layer.a = testing::random_floats(layer.a.size(), 11, std::sqrt(3.0f / d_model));
  layer.b = testing::random_floats(layer.b.size(), 12, std::sqrt(3.0f / rank));
  layer.bias = testing::random_floats(d_ff, 13, 0.5f);
  layer.decision = 0.5f;
  ActivationPredictor predictor;
  predictor.layers.push_back(layer);
  ThreadPool pool(2);
  PredictorSelector selector(predictor, pool);

  const uint64_t f32_bytes = (layer.a.size() + layer.b.size() + layer.bias.size()) * sizeof(float);
  EXPECT_EQ(selector.predictor().bytes(), PredictorSelector::bytes_for(predictor));
  EXPECT_LT(selector.predictor().bytes(), f32_bytes * 0.51);

  // F16 keeps 11 significant bits of each weight: the rounding errors of a logit's rank x
  // d_model products add up to about 2^-11 of its spread (measured at most 1.6e-3 over these
  // inputs), so only decisions that close to the threshold may flip; 0.01 is 6x that.
  constexpr float kMargin = 0.01f;
  const int kInputs = 200;
  std::vector<float> inputs, hidden(rank), logits(d_ff);
  std::vector<int32_t> active, batch_union;
  int64_t agree = 0, total = 0, selected = 0;
  float worst = 0;
  for (int n = 0; n < kInputs; ++n) {
    const std::vector<float> x = testing::random_floats(d_model, 100 + n, std::sqrt(3.0f));
    inputs.insert(inputs.end(), x.begin(), x.end());
    layer.logits(x.data(), hidden.data(), logits.data());
    selector.select(0, x.data(), 1, active);
    std::vector<uint8_t> chosen(d_ff, 0);
    for (int32_t i : active) chosen[i] = 1;
    if (n < 8) batch_union.insert(batch_union.end(), active.begin(), active.end());
    for (int i = 0; i < d_ff; ++i) {
      const bool expected = logits[i] > layer.decision;
      selected += expected;
      ++total;
      if (chosen[i] == expected) {
        ++agree;
      } else {
        worst = std::max(worst, std::abs(logits[i] - layer.decision));
      }
    }
  }
  EXPECT_GT(selected, total / 5);
  EXPECT_LT(selected, total / 2);
  EXPECT_GE(static_cast<double>(agree) / static_cast<double>(total), 0.995);
  EXPECT_LT(worst, kMargin);
  std::printf("compact predictor: %.4f%% of %lld decisions agree, the worst flip %.5f from the "
              "threshold; %llu bytes, F32 %llu\n",
              100.0 * static_cast<double>(agree) / static_cast<double>(total),
              static_cast<long long>(total), worst,
              static_cast<unsigned long long>(selector.predictor().bytes()),
              static_cast<unsigned long long>(f32_bytes));

  // A batch selects the union of its tokens' selections.
  std::sort(batch_union.begin(), batch_union.end());
  batch_union.erase(std::unique(batch_union.begin(), batch_union.end()), batch_union.end());
  selector.select(0, inputs.data(), 8, active);
  EXPECT_EQ(active, batch_union);
}

std::string write_profile(const std::string& path, int n_layers, const std::vector<float>& levels,
                          float threshold) {
  SparsityProfile profile;
  profile.levels = levels;
  for (size_t i = 0; i < levels.size(); ++i) profile.thresholds.emplace_back(n_layers, threshold);
  GgufWriter writer;
  writer.add_string("general.architecture", "flashlm-sparsity");
  writer.add_uint32("flashlm.n_layers", static_cast<uint32_t>(n_layers));
  profile.write_to(writer);
  writer.write(path);
  return path;
}

ActivationPredictor random_predictor(float sparsity, int n_layers, int d_model, int d_ff,
                                     uint64_t seed) {
  ActivationPredictor p;
  p.sparsity = sparsity;
  for (int l = 0; l < n_layers; ++l) {
    LayerPredictor layer(4 + l, d_model, d_ff);
    layer.a = testing::random_floats(layer.a.size(), seed + 3 * l);
    layer.b = testing::random_floats(layer.b.size(), seed + 3 * l + 1);
    layer.bias = testing::random_floats(layer.bias.size(), seed + 3 * l + 2);
    layer.decision = -0.25f * l;
    for (int i = 0; i < l; ++i) layer.pinned.push_back(3 * i + 1);  // none in layer 0
    layer.recall = 0.9f;
    layer.precision = 0.5f;
    p.layers.push_back(std::move(layer));
  }
  return p;
}

TEST(PredictorFile, RoundTripKeepsThresholdsAndOtherLevels) {
  const std::string path =
      write_profile(testing::temp_path("round-trip.sparse"), 3, {0.5f, 0.7f}, 0.25f);
  const ActivationPredictor p50 = random_predictor(0.5f, 3, 16, 40, 10);
  const ActivationPredictor p70 = random_predictor(0.7f, 3, 16, 40, 20);
  save_predictor(path, p50);
  save_predictor(path, p70);
  save_predictor(path, p50);  // replacing a level keeps the other

  auto file = GgufFile::open(path);
  EXPECT_EQ(SparsityProfile::from_gguf(*file, 3).at(0.7f), std::vector<float>(3, 0.25f));
  EXPECT_EQ(ActivationPredictor::levels_in(*file).size(), 2u);
  for (const ActivationPredictor* want : {&p50, &p70}) {
    auto got = ActivationPredictor::from_gguf(*file, want->sparsity, 3, 16, 40);
    ASSERT_TRUE(got.has_value());
    ASSERT_EQ(got->layers.size(), 3u);
    for (int l = 0; l < 3; ++l) {
      EXPECT_EQ(got->layers[l].rank, 4 + l);
      EXPECT_EQ(got->layers[l].a, want->layers[l].a);
      EXPECT_EQ(got->layers[l].b, want->layers[l].b);
      EXPECT_EQ(got->layers[l].bias, want->layers[l].bias);
      EXPECT_EQ(got->layers[l].decision, want->layers[l].decision);
      EXPECT_EQ(got->layers[l].pinned, want->layers[l].pinned);
    }
  }
  EXPECT_FALSE(ActivationPredictor::from_gguf(*file, 0.9f, 3, 16, 40).has_value());
  // Another model's shapes are refused, not misread.
  EXPECT_THROW(ActivationPredictor::from_gguf(*file, 0.5f, 3, 16, 41), Error);
  EXPECT_THROW(ActivationPredictor::from_gguf(*file, 0.5f, 4, 16, 40), Error);

  // A pinned neuron outside the model is refused with the file and key named.
  ActivationPredictor bad = p50;
  bad.layers[1].pinned = {39, 40};
  save_predictor(path, bad);
  file = GgufFile::open(path);
  try {
    ActivationPredictor::from_gguf(*file, 0.5f, 3, 16, 40);
    FAIL() << "a pinned neuron past d_ff must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.1.pinned"), std::string::npos) << e.what();
  }
}

// A converted tiny model with thresholds for sparsity 0.5 calibrated on its own output.
struct SparseModel {
  std::string flm;
  std::unique_ptr<Model> model;
};

SparseModel calibrated_model(const std::string& name) {
  SparseModel m;
  const std::string gguf = testing::temp_path(name + ".gguf");
  m.flm = testing::temp_path(name + ".flm");
  testing::write_tiny_model(gguf, {.n_layers = 3, .weight_type = TensorType::Q8_0});
  convert_to_flm(gguf, m.flm, {.force = true});
  m.model = Model::load(m.flm);
  std::string text;
  for (int i = 0; i < 40; ++i) text += "the quick brown fox jumps over the lazy dog. ";
  const SparsityProfile profile = calibrate_thresholds(
      *m.model, text, {.threads = 2, .max_tokens = 512, .segment_tokens = 64, .levels = {0.5f}},
      {});
  GgufWriter writer;
  writer.add_string("general.architecture", "flashlm-sparsity");
  profile.write_to(writer);
  writer.write(sparsity_file_for(m.flm));
  return m;
}

const std::vector<int32_t> kPrompt = {84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114};

// How a sparse mode reads and what it computes (dense mode ignores both).
struct SparseRun {
  std::string reads = "planned";
  bool compute_read = true;
};

// measure: also check the online recall of a predictor that selects every neuron.
std::vector<float> logits_of(const Model& model, const std::string& mode, bool measure = false,
                             const SparseRun& run = {}) {
  Engine engine(model, {.threads = 2,
                        .context_size = 64,
                        .max_batch = 8,
                        .mode = mode,
                        .sparsity = 0.5f,
                        .sparse_reads = run.reads,
                        .compute_read = run.compute_read,
                        .measure_predictor = measure});
  std::vector<float> out;
  for (size_t i = 0; i < kPrompt.size(); ++i) {
    auto logits = engine.transformer().forward(std::span(&kPrompt[i], 1));
    out.insert(out.end(), logits.begin(), logits.end());
  }
  if (measure) {
    const PredictorQuality* q = engine.predictor_quality();
    EXPECT_NE(q, nullptr);
    if (q) {
      EXPECT_EQ(q->recall(), 1.0);
      EXPECT_GT(q->true_positives, 0u);
      EXPECT_GT(q->false_positives, 0u);  // it predicts every neuron, half are inactive
    }
  }
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double{a[i]} - b[i]));
  return d;
}

TEST(SparseMode, NeedsATrainedPredictor) {
  const SparseModel m = calibrated_model("no-predictor");
  try {
    Engine engine(*m.model, {.mode = "sparse", .sparsity = 0.5f, .sparse_reads = "planned"});
    FAIL() << "planned sparse reads without a predictor must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train-predictor"), std::string::npos) << e.what();
  }
}

TEST(SparseMode, OverPredictingEqualsDenseAtTheSameThresholds) {
  const SparseModel m = calibrated_model("over-predicting");
  const ModelConfig& c = m.model->config;
  ActivationPredictor all = random_predictor(0.5f, c.n_layers, c.d_model, c.d_ff, 5);
  for (LayerPredictor& l : all.layers) l.decision = -std::numeric_limits<float>::infinity();
  save_predictor(sparsity_file_for(m.flm), all);

  const auto dense = logits_of(*m.model, "dense");
  for (const SparseRun& run : {SparseRun{"planned", true}, SparseRun{"planned", false},
                               SparseRun{"streamed", false}}) {
    const auto sparse = logits_of(*m.model, "sparse", true, run);
    const auto oracle = logits_of(*m.model, "sparse-oracle", false, run);
    EXPECT_LT(max_abs_diff(sparse, dense), 1e-4) << run.reads << " " << run.compute_read;
    EXPECT_LT(max_abs_diff(sparse, oracle), 1e-4) << run.reads << " " << run.compute_read;
  }

  // The thresholds matter: without them the logits differ, so the comparison above has teeth.
  Engine plain(*m.model, {.threads = 2, .context_size = 64, .max_batch = 8});
  std::vector<float> unthresholded;
  for (size_t i = 0; i < kPrompt.size(); ++i) {
    auto logits = plain.transformer().forward(std::span(&kPrompt[i], 1));
    unthresholded.insert(unthresholded.end(), logits.begin(), logits.end());
  }
  EXPECT_GT(max_abs_diff(unthresholded, dense), 1e-3);
}

EngineOptions oracle_options(const std::string& budget, const std::string& reads, bool overlap) {
  return {.threads = 2,
          .context_size = 64,
          .max_batch = 8,
          .mode = "sparse-oracle",
          .mem_budget = budget,
          .sparsity = 0.5f,
          .sparse_reads = reads,
          .overlap_io = overlap};
}

// The oracle path with every combination of the cache's situations, for both read
// strategies: overlapping reads with compute or not; a budget that holds every neuron, a few
// per layer (planned: the rest are read each token and used straight from the staging buffer;
// streamed: the rest of each layer streams), or none beyond the resident part and the buffers.
TEST(SparseMode, OracleEqualsDenseWithOrWithoutOverlapUnderAnyBudget) {
  const SparseModel m = calibrated_model("oracle-budgets");
  const auto dense = logits_of(*m.model, "dense");
  for (SparseReads reads : {SparseReads::Planned, SparseReads::Streamed}) {
    const MemoryPlan roomy =
        plan_engine_memory(*m.model, oracle_options("", sparse_reads_name(reads), true));
    const uint64_t fixed = roomy.fixed_bytes();
    const std::string tight = std::to_string(fixed + roomy.ffn_bytes / 20);
    const std::string nothing_cached = std::to_string(fixed);
    for (const std::string& budget : {std::string(), tight, nothing_cached}) {
      for (bool overlap : {true, false}) {
        Engine engine(*m.model, oracle_options(budget, sparse_reads_name(reads), overlap));
        ASSERT_EQ(engine.plan()->sparse_reads, reads);
        std::vector<float> got;
        for (size_t i = 0; i < kPrompt.size(); ++i) {
          auto logits = engine.transformer().forward(std::span(&kPrompt[i], 1));
          got.insert(got.end(), logits.begin(), logits.end());
        }
        const std::string where = fmt::format("{} reads, budget '{}', overlap {}",
                                              sparse_reads_name(reads), budget, overlap);
        EXPECT_LT(max_abs_diff(got, dense), 1e-4) << where;
        if (!budget.empty()) {
          EXPECT_LE(engine.plan()->total_bytes(), engine.plan()->budget) << where;
          EXPECT_GT(engine.flash_stats()->bytes_read, 0u) << where;
        }
      }
    }
  }
}

// Streamed reads: each layer's streamed part is read once per token, the next layer's read
// starting while this one computes, so after T tokens one read-ahead (the next token's first
// layer) is in flight beyond the T x layers reads; without overlap there is none. The
// resident neurons are never read again.
TEST(SparseMode, StreamedReadsReadEachLayerOnceAhead) {
  const SparseModel m = calibrated_model("streamed-reads");
  const FlashModelFile& flm = *m.model->flash;
  const MemoryPlan roomy = plan_engine_memory(*m.model, oracle_options("", "streamed", true));
  const std::string budget = std::to_string(roomy.fixed_bytes() + roomy.ffn_bytes / 4);
  const int layers = static_cast<int>(flm.layers().size());
  for (bool overlap : {true, false}) {
    Engine engine(*m.model, oracle_options(budget, "streamed", overlap));
    const int resident = engine.plan()->resident_neurons_per_layer;
    ASSERT_GT(resident, 0);
    ASSERT_LT(resident, flm.d_ff());
    engine.reset_stats();  // construction read every layer once to keep its resident neurons
    const int tokens = 5;
    for (int i = 0; i < tokens; ++i) engine.transformer().forward(std::span(&kPrompt[i], 1));
    const uint64_t align = IoEngine(m.flm).alignment();  // O_DIRECT's, this file system's
    const uint64_t streamed_bytes =
        align_up(flm.layers()[0].offset + flm.layers()[0].bytes, align) -
        align_down(flm.layers()[0].offset + resident * flm.layout().stride, align);
    const uint64_t reads = static_cast<uint64_t>(tokens) * layers + (overlap ? 1 : 0);
    EXPECT_EQ(engine.flash_stats()->bytes_read, reads * streamed_bytes) << "overlap " << overlap;
    const SparseStats& s = *engine.sparse_stats();
    EXPECT_EQ(s.layer_steps, static_cast<uint64_t>(tokens) * layers);
    EXPECT_EQ(s.neurons_loaded, s.layer_steps * static_cast<uint64_t>(flm.d_ff() - resident));
    EXPECT_LE(s.cache_hits, s.neurons_active);
  }
}

// auto picks streamed reads where the active neurons' reads would cover most of each layer
// (this tiny model's small bundles at half the neurons active), planned where they leave
// holes (a high sparsity).
TEST(SparseMode, AutoChoosesTheReadStrategyFromTheExpectedCoverage) {
  const SparseModel m = calibrated_model("auto-reads");
  Engine engine(*m.model, {.threads = 2, .mode = "sparse-oracle", .sparsity = 0.5f});
  EXPECT_GE(engine.plan()->expected_read_coverage, kStreamedCoverage);
  EXPECT_EQ(engine.plan()->sparse_reads, SparseReads::Streamed);
  EXPECT_NE(engine.plan()->describe().find("streamed"), std::string::npos);
  EXPECT_EQ(parse_sparse_reads("auto", 0.2), SparseReads::Planned);
  EXPECT_EQ(parse_sparse_reads("planned", 1.0), SparseReads::Planned);
  EXPECT_EQ(parse_sparse_reads("streamed", 0.0), SparseReads::Streamed);
  EXPECT_THROW(parse_sparse_reads("sometimes", 0.5), Error);
}

TEST(SparseMode, UnderPredictingChangesTheOutputWhereThePredictorDecides) {
  const SparseModel m = calibrated_model("under-predicting");
  const ModelConfig& c = m.model->config;
  ActivationPredictor none = random_predictor(0.5f, c.n_layers, c.d_model, c.d_ff, 6);
  for (LayerPredictor& l : none.layers) l.decision = std::numeric_limits<float>::infinity();
  save_predictor(sparsity_file_for(m.flm), none);
  const auto dense = logits_of(*m.model, "dense");
  EXPECT_GT(max_abs_diff(logits_of(*m.model, "sparse", false, {"planned", true}), dense), 1e-3);
  EXPECT_GT(max_abs_diff(logits_of(*m.model, "sparse", false, {"streamed", false}), dense), 1e-3);
  // Streamed reads bring in every neuron, and then all are computed under the thresholds: the
  // predictor is not consulted, so its misses cost nothing.
  EXPECT_LT(max_abs_diff(logits_of(*m.model, "sparse", false, {"streamed", true}), dense), 1e-4);
}

// Asks for every other neuron only, as a predictor that misses half of them would.
class EvenNeurons : public NeuronSelector {
 public:
  explicit EvenNeurons(int d_ff) : d_ff_(d_ff) {}
  void select(int, const float*, int64_t, std::vector<int32_t>& active) override {
    active.clear();
    for (int i = 0; i < d_ff_; i += 2) active.push_back(i);
  }

 private:
  int d_ff_;
};

// The even neurons' reads cover the whole layer (bundles are smaller than a page and the
// planner reads through small holes), so with compute_read every neuron is computed: the
// result equals the whole layer; without it, only the even neurons.
TEST(SparseMode, NeuronsTheReadsBringInAreComputedToo) {
  const SparseModel m = calibrated_model("read-neighbours");
  const FlashModelFile& flm = *m.model->flash;
  const int layer = 1, d = m.model->config.d_model, d_ff = flm.d_ff();
  ThreadPool pool(2);
  std::vector<uint8_t> bytes(flm.layers()[layer].bytes);
  {
    std::ifstream in(m.flm, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(flm.layers()[layer].offset));
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  std::vector<const uint8_t*> all, even;
  for (int i = 0; i < d_ff; ++i) {
    all.push_back(bytes.data() + i * flm.layout().stride);
    if (i % 2 == 0) even.push_back(all.back());
  }
  SparseFfn reference(flm.layout(), m.model->config.activation, pool);
  const auto x = testing::random_floats(d, 11);
  std::vector<float> whole(d), evens(d);
  reference.forward(all, x.data(), 1, whole.data(), 0.0f);
  reference.forward(even, x.data(), 1, evens.data(), 0.0f);

  MemoryPlan plan = plan_memory(flm, FfnMode::SparseOracle, ~uint64_t{0} / 4);
  plan.cache_neurons_per_layer = 4;  // nearly nothing cached: everything is read
  EvenNeurons selector(d_ff);
  const std::vector<float> thresholds(flm.layers().size(), 0.0f);
  for (bool compute_read : {true, false}) {
    WindowedSparseFfn ffn(flm, m.model->config, plan, 1, thresholds, selector, IoBackend::Auto,
                          PlannerSettings{}, pool);
    ffn.set_compute_read(compute_read);
    std::vector<float> got(d);
    ffn.forward({.pass = 1, .layer = layer, .n_tokens = 1}, x.data(), got.data());
    const std::vector<float>& expected = compute_read ? whole : evens;
    double diff = 0, gap = 0;
    for (int i = 0; i < d; ++i) {
      diff = std::max(diff, std::abs(double{got[i]} - expected[i]));
      gap = std::max(gap, std::abs(double{whole[i]} - evens[i]));
    }
    EXPECT_LT(diff, 1e-4) << "compute_read " << compute_read;
    EXPECT_GT(gap, 1e-2);  // the odd neurons matter, so the comparison has teeth
    EXPECT_EQ(ffn.sparse_stats().neurons_read_extra, compute_read ? uint64_t(d_ff / 2) : 0u);
  }
}

}  // namespace
}  // namespace flashlm
