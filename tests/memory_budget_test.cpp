// One memory budget for the whole process: what the plan counts, how `auto` chooses a mode,
// what a percentage is a share of, and the lossless streamed path that needs no calibration.
// (That the process really stays inside the plan is checked in a cgroup: tests/memory/.)
#include <gtest/gtest.h>

#include <filesystem>
#include <span>

#include "common/error.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "common/thread_pool.h"
#include "flash/flash_embedding.h"
#include "sparse/flash_ffn.h"
#include "flash/flash_layout.h"
#include "flash/streamed_weights.h"
#include "model/transformer.h"
#include "sparse/calibrate.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

testing::TinyFlm converted(const std::string& name) {
  return testing::write_tiny_flm(name,
                                 {.n_layers = 3, .d_ff = 256, .weight_type = TensorType::Q8_0});
}

EngineOptions options(const std::string& mode, const std::string& budget = "") {
  return {.threads = 2, .context_size = 64, .max_batch = 8, .mode = mode, .mem_budget = budget};
}

const std::vector<int32_t> kPrompt = {84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114};

std::vector<float> logits_of(const Model& model, const EngineOptions& o) {
  Engine engine(model, o);
  std::vector<float> out;
  for (size_t i = 0; i < kPrompt.size(); ++i) {
    auto logits = engine.transformer().forward(std::span(&kPrompt[i], 1));
    out.insert(out.end(), logits.begin(), logits.end());
  }
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double{a[i]} - b[i]));
  return d;
}

TEST(MemoryBudget, PlanCountsEveryPartAndItsTotal) {
  const testing::TinyFlm m = converted("parts");
  auto model = Model::load(m.flm);
  const MemoryPlan p = plan_engine_memory(*model, options("hybrid"));
  EXPECT_GT(p.working.process, 0u);
  EXPECT_GT(p.working.kv_cache, 0u);
  EXPECT_GT(p.working.activations, 0u);
  EXPECT_GT(p.working.reserve, 0u);
  EXPECT_EQ(p.working.predictors, 0u);  // hybrid consults no predictor
  EXPECT_EQ(p.total_bytes(), p.dram_bytes() + p.working.total());
  // The KV cache follows -c and the cache type.
  EngineOptions longer = options("hybrid");
  longer.context_size = 128;
  EXPECT_EQ(plan_engine_memory(*model, longer).working.kv_cache, 2 * p.working.kv_cache);
  EngineOptions f32 = options("hybrid");
  f32.cache_type_k = f32.cache_type_v = "f32";
  EXPECT_EQ(plan_engine_memory(*model, f32).working.kv_cache, 2 * p.working.kv_cache);
  const std::string text = p.describe();
  for (const char* part : {"KV cache", "activations", "the process itself", "reserve", "total"}) {
    EXPECT_NE(text.find(part), std::string::npos) << part << " missing from:\n" << text;
  }
}

TEST(MemoryBudget, EveryModeStaysInsideItsBudget) {
  const testing::TinyFlm m = converted("inside");
  auto model = Model::load(m.flm);
  for (const std::string mode : {"naive", "hybrid", "sparse"}) {
    const MemoryPlan roomy = plan_engine_memory(*model, options(mode));
    for (double share : {0.0, 0.5}) {
      const uint64_t budget = roomy.fixed_bytes() + static_cast<uint64_t>(share * roomy.ffn_bytes);
      Engine engine(*model, options(mode, std::to_string(budget)));
      EXPECT_LE(engine.plan()->total_bytes(), budget) << mode << " " << share;
      EXPECT_GE(engine.plan()->total_bytes(), budget - budget / 10) << mode << " " << share;
    }
  }
}

TEST(MemoryBudget, TooSmallABudgetIsRefusedWithEveryPartAndWhatToChange) {
  const testing::TinyFlm m = converted("refused");
  auto model = Model::load(m.flm);
  const MemoryPlan roomy = plan_engine_memory(*model, options("naive"));
  try {
    // (The tiny model's attention and output head are smaller than the buffers streaming them
    // would take, so nothing below the fixed part fits.)
    Engine engine(*model, options("naive", std::to_string(roomy.fixed_bytes() - 1)));
    FAIL() << "a budget one byte under the fixed part must be refused";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const char* part : {"too small", "KV cache", "the process itself", "-c", "--mem-budget"}) {
      EXPECT_NE(what.find(part), std::string::npos) << part << " missing from: " << what;
    }
  }
  EXPECT_NO_THROW(Engine(*model, options("naive", std::to_string(roomy.fixed_bytes()))));
}

TEST(MemoryBudget, PercentIsOfTheSourceGguf) {
  const testing::TinyFlm m = converted("percent");
  auto model = Model::load(m.flm);
  const uint64_t gguf_bytes = std::filesystem::file_size(m.gguf);
  EXPECT_EQ(model->flash->source_bytes(), gguf_bytes);
  const MemoryPlan p = plan_engine_memory(*model, options("mmap", "1000000%"));
  EXPECT_EQ(p.percent_base, gguf_bytes);
  EXPECT_EQ(p.budget, gguf_bytes * 10000);
  EXPECT_NE(p.describe().find("source GGUF"), std::string::npos) << p.describe();
  // A GGUF model's percentage is of its own file.
  auto gguf = Model::load(m.gguf);
  EXPECT_EQ(plan_engine_memory(*gguf, options("dense", "1000000%")).budget, gguf_bytes * 10000);
}

TEST(MemoryBudget, AutoRunsDenseWhenItFitsElseStreamedSparse) {
  const testing::TinyFlm m = converted("auto");
  auto model = Model::load(m.flm);
  const MemoryPlan unbounded = plan_engine_memory(*model, options("auto"));
  EXPECT_EQ(unbounded.mode, FfnMode::Dense);
  const MemoryPlan dense = plan_engine_memory(*model, options("dense"));
  const MemoryPlan fits = plan_engine_memory(*model, options("auto", std::to_string(dense.fixed_bytes())));
  EXPECT_EQ(fits.mode, FfnMode::Dense);
  const MemoryPlan tight =
      plan_engine_memory(*model, options("auto", std::to_string(dense.fixed_bytes() - 1)));
  EXPECT_EQ(tight.mode, FfnMode::Sparse);
  EXPECT_EQ(tight.sparse_reads, SparseReads::Streamed);
  EXPECT_NE(tight.mode_reason.find("lossless"), std::string::npos) << tight.mode_reason;
  EXPECT_NE(tight.describe().find("chosen"), std::string::npos) << tight.describe();
}

// The default fast path: streamed sparse reads at --sparsity 0 compute every neuron, need no
// sparsity file at all, and give dense's logits under a budget that streams most of the FFN.
TEST(MemoryBudget, StreamedAtSparsityZeroIsLosslessWithoutCalibration) {
  const testing::TinyFlm m = converted("lossless");
  auto model = Model::load(m.flm);
  ASSERT_FALSE(std::filesystem::exists(m.flm + ".sparse"));
  const auto dense = logits_of(*model, options("dense"));
  const MemoryPlan roomy = plan_engine_memory(*model, options("sparse"));
  const std::string budget = std::to_string(roomy.fixed_bytes() + roomy.ffn_bytes / 4);
  for (const std::string mode : {"auto", "sparse"}) {
    Engine engine(*model, options(mode, budget));
    EXPECT_EQ(engine.plan()->mode, FfnMode::Sparse);
    EXPECT_EQ(engine.plan()->sparse_reads, SparseReads::Streamed);
    EXPECT_GT(engine.plan()->resident_neurons_per_layer, 0);
    EXPECT_LT(engine.plan()->resident_neurons_per_layer, model->config.d_ff);
  }
  const auto streamed = logits_of(*model, options("sparse", budget));
  EXPECT_LT(max_abs_diff(streamed, dense), 1e-4);
  // Planned reads consult the predictor: without a sparsity file they are refused clearly.
  EngineOptions planned = options("sparse", budget);
  planned.sparse_reads = "planned";
  EXPECT_THROW(Engine(*model, planned), Error);
}

// calibrate under a budget streams the FFN (hybrid) and finds the same thresholds.
TEST(MemoryBudget, CalibrationUnderABudgetFindsTheSameThresholds) {
  const testing::TinyFlm m = converted("calibrate");
  auto model = Model::load(m.flm);
  std::string text;
  for (int i = 0; i < 20; ++i) text += "the quick brown fox jumps over the lazy dog. ";
  CalibrationOptions calibration{.threads = 2, .max_tokens = 256, .segment_tokens = 64,
                                 .levels = {0.5f}};
  const SparsityProfile dense = calibrate_thresholds(*model, text, calibration, {});
  EngineOptions tool = options("hybrid");
  tool.context_size = 64;
  tool.max_batch = 32;
  const MemoryPlan roomy = plan_engine_memory(*model, tool);
  tool.mem_budget = std::to_string(roomy.fixed_bytes() + roomy.ffn_bytes / 5);
  const MemoryPlan plan = plan_engine_memory(*model, tool);
  ASSERT_LT(plan.resident_neurons_per_layer, model->config.d_ff);
  calibration.ffn_plan = &plan;
  const SparsityProfile streamed = calibrate_thresholds(*model, text, calibration, {});
  ASSERT_EQ(streamed.thresholds.size(), 1u);
  for (size_t l = 0; l < dense.thresholds[0].size(); ++l) {
    EXPECT_NEAR(streamed.thresholds[0][l], dense.thresholds[0][l], 1e-6) << "layer " << l;
  }
}

// Below the budget that holds the attention and the output head, they stream from flash too
// (the last layers' attention first, then the output head; a tied head takes the embedding
// table with it), and the logits stay those of dense in DRAM.
class StreamedWeightsTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    const std::string name = GetParam() ? "stream-tied" : "stream-untied";
    m_ = {testing::temp_path(name + ".gguf"), testing::temp_path(name + ".flm")};
    testing::write_tiny_model(m_.gguf, {.n_layers = 3, .d_model = 256, .d_ff = 256,
                                        .n_heads = 4, .n_kv_heads = 2,
                                        .tied_embeddings = GetParam()});
    convert_to_flm(m_.gguf, m_.flm, {.force = true});
    model_ = Model::load(m_.flm);
  }
  testing::TinyFlm m_;
  std::unique_ptr<Model> model_;
};

// The component: every layer's attention and the whole head from flash, for a batch (every
// token's logits) and then token by token, against the same pass with them in DRAM.
TEST_P(StreamedWeightsTest, EverythingStreamedGivesTheResidentLogits) {
  const Model& model = *model_;
  ThreadPool pool(2);
  FlashFeedForward ffn(*model.flash, model.config,
                       plan_memory(*model.flash, FfnMode::Dense, ~uint64_t{0} / 4),
                       IoBackend::Auto, pool);
  const TransformerOptions resident_options{.context_size = 64, .max_batch = 16,
                                            .all_logits = true};
  Transformer resident(model.config, model.weights, ffn, pool, resident_options);
  StreamedWeights stream(*model.file, model.weights, 0, true, IoBackend::Auto, pool);
  FlashEmbedding embedding(model.file->path(), model.file->tensor("token_embd.weight"),
                           IoBackend::Auto);
  TransformerOptions streamed_options = resident_options;
  streamed_options.weight_stream = &stream;
  streamed_options.embedding = &embedding;
  Transformer streamed(model.config, model.weights, ffn, pool, streamed_options);
  for (int round = 0; round < 2; ++round) {  // the second after a reset: reads a step ahead
    resident.truncate(0);
    streamed.truncate(0);
    const auto a = resident.forward(kPrompt, true);
    const std::vector<float> want(a.begin(), a.end());
    const auto b = streamed.forward(kPrompt, true);
    EXPECT_LT(max_abs_diff(std::vector<float>(b.begin(), b.end()), want), 1e-5);
    for (int32_t token : {5, 17, 200}) {
      const auto x = resident.forward(std::span(&token, 1));
      const std::vector<float> one(x.begin(), x.end());
      const auto y = streamed.forward(std::span(&token, 1));
      EXPECT_LT(max_abs_diff(std::vector<float>(y.begin(), y.end()), one), 1e-5);
    }
  }
  EXPECT_GT(stream.stats().bytes_read, model.weights.output.bytes());
}

TEST_P(StreamedWeightsTest, BelowTheResidentFloorAttentionAndOutputStreamWithDenseLogits) {
  const Model& model = *model_;
  const auto dense = logits_of(model, options("dense"));
  for (const std::string mode : {"naive", "sparse"}) {
    const MemoryPlan roomy = plan_engine_memory(model, options(mode));
    ASSERT_FALSE(roomy.streams_weights());
    // Step the budget down until it is refused, checking each new configuration on the way.
    bool saw_attention = false, saw_output = false;
    std::pair<int, bool> last{-1, false};
    for (uint64_t budget = roomy.fixed_bytes() - 1;; budget -= 16 << 10) {
      const EngineOptions o = options(mode, std::to_string(budget));
      MemoryPlan p;
      try {
        p = plan_engine_memory(model, o);
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("already stream"), std::string::npos) << e.what();
        break;
      }
      ASSERT_LE(p.total_bytes(), budget);
      ASSERT_TRUE(p.streams_weights()) << p.describe();
      saw_attention = saw_attention || p.streamed_attention_layers > 0;
      saw_output = saw_output || p.output_streamed;
      if (std::pair(p.streamed_attention_layers, p.output_streamed) == last) continue;
      last = {p.streamed_attention_layers, p.output_streamed};
      EXPECT_NE(p.describe().find("left on flash"), std::string::npos) << p.describe();
      EXPECT_LT(max_abs_diff(logits_of(model, o), dense), 1e-4)
          << mode << ", budget " << budget << ":\n" << p.describe();
    }
    EXPECT_TRUE(saw_attention) << mode;
    // Untied, the head alone is worth streaming on this model; tied, its embedding's read
    // buffer would cost more than the table saves (the component test covers that path).
    if (!GetParam()) {
      EXPECT_TRUE(saw_output) << mode;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Embeddings, StreamedWeightsTest, ::testing::Values(true, false),
                         [](const auto& param) { return param.param ? "Tied" : "Untied"; });

}  // namespace
}  // namespace flashlm
