// Every way of serving the FFN from a .flm file against the dense FFN of the GGUF it came
// from, and against each other.
#include "sparse/flash_ffn.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "common/error.h"
#include "common/thread_pool.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "flash/flash_embedding.h"
#include "model/transformer.h"
#include "quant/reference.h"
#include "sparse/sparse_ffn.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

struct Converted {
  std::string gguf, flm;
};

Converted make_models(const std::string& name, BundleType bundle_type, TensorType weights) {
  Converted c{testing::temp_path(name + ".gguf"), testing::temp_path(name + ".flm")};
  testing::write_tiny_model(c.gguf, {.n_layers = 3, .weight_type = weights});
  convert_to_flm(c.gguf, c.flm, {.bundle_type = bundle_type, .force = true});
  return c;
}

double max_abs_diff(std::span<const float> a, std::span<const float> b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double{a[i]} - b[i]));
  return d;
}

const std::vector<int32_t> kPrompt = {84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114};

EngineOptions options_for(const std::string& mode, const std::string& budget = "") {
  return {.threads = 2, .context_size = 64, .max_batch = 8, .mode = mode, .mem_budget = budget};
}

std::vector<float> logits_of(const std::string& path, const std::string& mode,
                             const std::string& budget = "") {
  auto model = Model::load(path);
  Engine engine(*model, options_for(mode, budget));
  std::vector<float> out;
  for (size_t i = 0; i < kPrompt.size(); ++i) {
    auto logits = engine.transformer().forward(std::span(&kPrompt[i], 1));
    out.insert(out.end(), logits.begin(), logits.end());
  }
  return out;
}

TEST(SparseFfn, AllNeuronsEqualTheDenseFfnOfTheSameWeights) {
  // F16 bundles of F32 weights: the bundle FFN and the dense FFN see nearly the same numbers.
  const Converted m = make_models("sparse-vs-dense", BundleType::F16, TensorType::F32);
  auto gguf_model = Model::load(m.gguf);
  auto flm_model = Model::load(m.flm);
  ThreadPool pool(2);
  DenseFeedForward dense(gguf_model->config, gguf_model->weights, pool);
  const auto x = testing::random_floats(3 * 64, 42);
  std::vector<float> expected(3 * 64), got(3 * 64);
  dense.forward({.layer = 1, .n_tokens = 3}, x.data(), expected.data());

  const FlashModelFile& flm = *flm_model->flash;
  FlashFeedForward flash(flm, flm_model->config, plan_memory(flm, FfnMode::Dense, 1ull << 30),
                         IoBackend::Auto, pool);
  flash.forward({.layer = 1, .n_tokens = 3}, x.data(), got.data());
  EXPECT_LT(max_abs_diff(got, expected), 5e-3);
}

TEST(SparseFfn, DisjointNeuronSetsSumToTheWholeLayer) {
  const Converted m = make_models("subset", BundleType::Q8_0, TensorType::Q8_0);
  auto model = Model::load(m.flm);
  const FlashModelFile& flm = *model->flash;
  ThreadPool pool(2);
  // Odd and even neurons computed apart sum to the whole layer.
  std::vector<uint8_t> bytes(flm.layers()[0].bytes);
  {
    std::ifstream in(m.flm, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(flm.layers()[0].offset));
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  const size_t stride = flm.layout().stride;
  SparseFfn sparse(flm.layout(), model->config.activation, pool);
  const auto x = testing::random_floats(64, 7);
  std::vector<float> whole(64), split(64);
  std::vector<const uint8_t*> all, odd, even;
  for (int i = 0; i < 128; ++i) {
    all.push_back(bytes.data() + i * stride);
    (i % 2 ? odd : even).push_back(bytes.data() + i * stride);
  }
  std::vector<float> part(64);
  sparse.forward(all, x.data(), 1, whole.data());
  sparse.forward(odd, x.data(), 1, split.data());
  sparse.forward(even, x.data(), 1, part.data());
  for (int i = 0; i < 64; ++i) split[i] += part[i];
  EXPECT_LT(max_abs_diff(whole, split), 1e-5);
}

// With thresholds (the sparse modes' and `--sparsity` in dense mode), a batch of tokens must
// give each token exactly what it gets alone: a neuron near its threshold flips when its
// activation differs by one rounding, and perplexity with -b 8 drifted from -b 1 before.
TEST(SparseFfn, BatchedTokensWithAThresholdEqualOneTokenAtATime) {
  const Converted m = make_models("batched-threshold", BundleType::Q8_0, TensorType::Q8_0);
  auto model = Model::load(m.flm);
  const FlashModelFile& flm = *model->flash;
  ThreadPool pool(2);
  FlashFeedForward flash(flm, model->config, plan_memory(flm, FfnMode::Dense, 1ull << 30),
                         IoBackend::Auto, pool);
  constexpr int kTokens = 6, d = 64;
  const auto x = testing::random_floats(kTokens * d, 11);
  std::vector<float> unpruned;
  for (float threshold : {0.0f, 0.05f, 0.2f}) {
    flash.set_thresholds(std::vector<float>(flm.layers().size(), threshold));
    std::vector<float> batched(kTokens * d), single(d);
    flash.forward({.layer = 1, .n_tokens = kTokens}, x.data(), batched.data());
    if (threshold == 0.0f) unpruned = batched;
    if (threshold > 0.1f) {
      ASSERT_GT(max_abs_diff(batched, unpruned), 1e-4) << "the threshold pruned nothing";
    }
    for (int t = 0; t < kTokens; ++t) {
      flash.forward({.layer = 1, .n_tokens = 1}, x.data() + t * d, single.data());
      for (int i = 0; i < d; ++i) {
        ASSERT_EQ(batched[t * d + i], single[i])
            << "threshold " << threshold << ", token " << t << ", element " << i;
      }
    }
  }
}

// Several tokens go through the matrix kernel over runs of neighbouring bundles: runs of
// every length (longer than one call's run, broken by gaps, reversed order, single bundles),
// each bundle type, with thresholds: each token must get bit for bit what it gets alone.
TEST(SparseFfn, RunsOfBundlesForSeveralTokensEqualOneTokenAtATime) {
  for (const auto& [bundle, weights] :
       {std::pair{BundleType::Source, TensorType::Q4_1}, std::pair{BundleType::Q8_0, TensorType::Q8_0},
        std::pair{BundleType::F16, TensorType::F32}}) {
    const Converted m = make_models("runs", bundle, weights);
    auto model = Model::load(m.flm);
    const FlashModelFile& flm = *model->flash;
    std::vector<uint8_t> bytes(flm.layers()[1].bytes);
    {
      std::ifstream in(m.flm, std::ios::binary);
      in.seekg(static_cast<std::streamoff>(flm.layers()[1].offset));
      in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    }
    const size_t stride = flm.layout().stride;
    const int d_ff = flm.d_ff(), d = model->config.d_model;
    std::vector<const uint8_t*> bundles;
    for (int i = 0; i < 40 && i < d_ff; ++i) bundles.push_back(bytes.data() + i * stride);
    for (int i = 45; i < d_ff; i += 3) bundles.push_back(bytes.data() + i * stride);
    for (int i = d_ff - 1; i >= d_ff - 20; i -= 1) bundles.push_back(bytes.data() + i * stride);
    ThreadPool pool(2);
    SparseFfn sparse(flm.layout(), model->config.activation, pool);
    for (int tokens : {2, 5, 9}) {
      const auto x = testing::random_floats(static_cast<size_t>(tokens) * d, 30 + tokens);
      for (float threshold : {0.0f, 0.05f}) {
        std::vector<float> batched(static_cast<size_t>(tokens) * d), single(d);
        sparse.forward(bundles, x.data(), tokens, batched.data(), threshold);
        for (int t = 0; t < tokens; ++t) {
          sparse.forward(bundles, x.data() + t * d, 1, single.data(), threshold);
          for (int i = 0; i < d; ++i) {
            ASSERT_EQ(batched[t * d + i], single[i])
                << type_name(weights) << " bundles, " << tokens << " tokens, threshold "
                << threshold << ", token " << t << ", element " << i;
          }
        }
      }
    }
  }
}

// A budget that covers what hybrid mode needs besides FFN neurons (resident part, stream
// buffers, KV cache, working buffers, the process itself) plus `ffn_share` of the FFN.
std::string budget_with_ffn_share(const std::string& flm_path, double ffn_share) {
  auto model = Model::load(flm_path);
  const MemoryPlan fixed = plan_engine_memory(*model, options_for("hybrid"));
  const uint64_t bytes = fixed.fixed_bytes() +
                         static_cast<uint64_t>(ffn_share * static_cast<double>(fixed.ffn_bytes));
  return std::to_string(bytes);
}

TEST(FlashModes, EveryModeGivesTheSameLogitsAsDense) {
  const Converted m = make_models("modes", BundleType::Source, TensorType::Q4_1);
  const auto dense = logits_of(m.flm, "dense");
  const std::string budget = budget_with_ffn_share(m.flm, 0.5);
  for (const std::string mode : {"naive", "hybrid", "mmap"}) {
    const auto got = logits_of(m.flm, mode, budget);
    EXPECT_LT(max_abs_diff(got, dense), 1e-4) << mode;
  }
  // The .flm in dense mode against the GGUF: down columns were re-quantized to Q8_0.
  const auto gguf = logits_of(m.gguf, "dense");
  EXPECT_LT(max_abs_diff(gguf, dense), 5e-2);
}

// An untied embedding table stays on flash in the flash modes: out of the resident part (the
// FFN gets that budget), each token's row read from the file, the same logits as dense.
TEST(FlashModes, UntiedEmbeddingStaysOnFlashWithTheSameLogits) {
  Converted m{testing::temp_path("untied.gguf"), testing::temp_path("untied.flm")};
  testing::write_tiny_model(m.gguf, {.n_layers = 2,
                                     .d_model = 256,
                                     .d_ff = 256,
                                     .weight_type = TensorType::Q4_K,
                                     .tied_embeddings = false});
  convert_to_flm(m.gguf, m.flm, {.force = true});
  const auto dense = logits_of(m.flm, "dense");
  const std::string budget = budget_with_ffn_share(m.flm, 0.5);
  for (const std::string mode : {"naive", "hybrid", "mmap"}) {
    EXPECT_LT(max_abs_diff(logits_of(m.flm, mode, budget), dense), 1e-4) << mode;
  }

  auto model = Model::load(m.flm);
  const GgufTensor& table = model->file->tensor("token_embd.weight");
  const MemoryPlan in_dram = plan_memory(*model->flash, FfnMode::Dense, ~uint64_t{0} / 4);
  const MemoryPlan on_flash = plan_memory(*model->flash, FfnMode::Hybrid, ~uint64_t{0} / 4);
  EXPECT_EQ(in_dram.embedding_flash_bytes, 0u);
  EXPECT_EQ(on_flash.embedding_flash_bytes, table.bytes);
  EXPECT_EQ(on_flash.resident_bytes + table.bytes, in_dram.resident_bytes);
  EXPECT_EQ(on_flash.model_bytes, in_dram.model_bytes);
  EXPECT_NE(on_flash.describe().find("left on flash"), std::string::npos);

  // More rows than one batch of reads, repeats included, against the table in the file.
  FlashEmbedding embedding(m.flm, table, IoBackend::Auto);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 150; ++i) tokens.push_back((i * 37) % testing::kTinyVocab);
  const int64_t d = model->config.d_model;
  std::vector<float> got(tokens.size() * d), expected(d);
  embedding.rows(tokens, got.data());
  for (size_t t = 0; t < tokens.size(); ++t) {
    const Matrix& e = model->weights.token_embedding;
    dequantize_row_reference(e.type, e.row(tokens[t]), expected.data(), d);
    ASSERT_LT(max_abs_diff(std::span(got).subspan(t * d, d), expected), 1e-6) << "token " << t;
  }
  EXPECT_GE(embedding.bytes_read(), tokens.size() * (table.bytes / table.rows()));
}

TEST(FlashModes, TiedEmbeddingStaysResident) {
  const Converted m = make_models("tied", BundleType::Source, TensorType::Q8_0);
  auto model = Model::load(m.flm);
  EXPECT_EQ(plan_memory(*model->flash, FfnMode::Naive, ~uint64_t{0} / 4).embedding_flash_bytes, 0u);
}

TEST(FlashModes, ImpossibleBudgetIsRefusedWithTheNumbers) {
  const Converted m = make_models("budget", BundleType::Source, TensorType::Q8_0);
  auto model = Model::load(m.flm);
  try {
    Engine engine(*model, {.mode = "naive", .mem_budget = "1K"});
    FAIL() << "a 1 KiB budget cannot hold the resident part";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("too small"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Engine(*model, {.mode = "dense", .mem_budget = "10%"}), Error);
}

TEST(FlashModes, StreamingModesNeedAFlmFile) {
  const Converted m = make_models("needs-flm", BundleType::Source, TensorType::Q8_0);
  auto model = Model::load(m.gguf);
  EXPECT_THROW(Engine(*model, {.mode = "naive"}), Error);
}

TEST(FlashModes, HybridKeepsTheBudget) {
  const Converted m = make_models("hybrid-budget", BundleType::Source, TensorType::Q8_0);
  auto model = Model::load(m.flm);
  for (double share : {0.0, 0.3, 0.7, 1.0}) {
    const std::string budget = budget_with_ffn_share(m.flm, share);
    Engine engine(*model, options_for("hybrid", budget));
    ASSERT_NE(engine.plan(), nullptr);
    EXPECT_LE(engine.plan()->total_bytes(), engine.plan()->budget) << budget;
  }
}

TEST(MemoryBudget, ParsesSizesAndPercentages) {
  EXPECT_EQ(parse_memory_budget("50%", 1000), 500u);
  EXPECT_EQ(parse_memory_budget("2K", 0), 2048u);
  EXPECT_EQ(parse_memory_budget("1.5M", 0), 1572864u);
  EXPECT_EQ(parse_memory_budget("1G", 0), 1073741824u);
  EXPECT_EQ(parse_memory_budget("12345", 0), 12345u);
  EXPECT_THROW(parse_memory_budget("lots", 0), Error);
  EXPECT_THROW(parse_memory_budget("-5%", 100), Error);
  EXPECT_THROW(parse_memory_budget("5X", 100), Error);
}

}  // namespace
}  // namespace flashlm
