// LoRA adapters: the arithmetic against a plain twin, the file format (round trip, every
// refusal), an adapted model against the same model with the adapter merged into its weights,
// and real models with an adapter against llama.cpp with the same adapter
// (tests/data/reference/<model>.lora.json, scripts/reference/make_lora_reference.py).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "flash/flash_layout.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "lora/lora.h"
#include "support/lora_pattern.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not say '" << part << "'";
}

const std::vector<int32_t> kPrompt = {84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114};

std::string tiny_model(const std::string& name, testing::TinyModelSpec spec = {}) {
  const std::string path = testing::temp_path(name + ".gguf");
  testing::write_tiny_model(path, spec);
  return path;
}

std::vector<float> last_logits(const Model& model, const EngineOptions& options) {
  Engine engine(model, options);
  const std::span<const float> logits = engine.transformer().forward(kPrompt);
  return {logits.begin(), logits.end()};
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double{a[i]} - b[i]));
  return d;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Lora, ApplyEqualsThePlainTwin) {
  LoraAdapter a;
  a.alpha = 6;
  a.layers.resize(1);
  LoraPair& p = a.pair(0, LoraTarget::AttnQ);
  p.rank = 3;
  p.in = 70;
  p.out = 45;
  p.a = testing::random_floats(p.rank * p.in, 1, 0.3f);
  p.b = testing::random_floats(p.out * p.rank, 2, 0.3f);
  LoraSet set;
  set.add(a, 0.5f);
  const int64_t n = 5;
  const std::vector<float> x = testing::random_floats(n * p.in, 3);
  std::vector<float> y = testing::random_floats(n * p.out, 4), expected = y;
  set.apply(0, LoraTarget::AttnQ, x.data(), n, y.data());
  LoraSet::apply_reference(p, 0.5f * 6 / 3, x.data(), n, expected.data());
  EXPECT_LT(max_abs_diff(y, expected), 1e-5);
  EXPECT_GT(max_abs_diff(y, testing::random_floats(n * p.out, 4)), 0.05);  // it did add
  // Other matrices of the layer are left alone.
  std::vector<float> k = testing::random_floats(n * p.out, 5), k0 = k;
  set.apply(0, LoraTarget::AttnK, x.data(), n, k.data());
  EXPECT_EQ(k, k0);
}

TEST(Lora, ScaleFollowsLlamaCpp) {
  LoraAdapter a;
  LoraPair p;
  p.rank = 8;
  a.alpha = 16;
  EXPECT_FLOAT_EQ(LoraSet::pair_scale(a, p, 0.5f), 1.0f);  // 0.5 * 16 / 8
  a.alpha = 0;  // no alpha: the user's scale alone
  EXPECT_FLOAT_EQ(LoraSet::pair_scale(a, p, 0.5f), 0.5f);
}

TEST(Lora, TargetNames) {
  EXPECT_EQ(parse_lora_targets("attn").size(), 4u);
  EXPECT_EQ(parse_lora_targets("ffn").size(), 3u);
  EXPECT_EQ(parse_lora_targets("all").size(), 7u);
  EXPECT_EQ(parse_lora_targets("attn_q,attn_v,attn_q").size(), 2u);
  EXPECT_TRUE(Contains(error_of([] { parse_lora_targets("attn_x"); }), "unknown LoRA module"));
}

TEST(Lora, SavedAdapterLoadsBackUnchanged) {
  const auto model = Model::load(tiny_model("lora-roundtrip"));
  const LoraAdapter a = testing::lora_pattern(model->config, {.rank = 3, .alpha = 5});
  const std::string path = testing::temp_path("roundtrip.lora.gguf");
  a.save(path, "tiny");
  const LoraAdapter b = LoraAdapter::load(path, model->config.lora_shapes());
  EXPECT_EQ(b.alpha, 5);
  EXPECT_EQ(b.architecture, "llama");
  ASSERT_EQ(b.layers.size(), a.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    for (int t = 0; t < kLoraTargets; ++t) {
      EXPECT_EQ(b.layers[l][t].a, a.layers[l][t].a);
      EXPECT_EQ(b.layers[l][t].b, a.layers[l][t].b);
    }
  }
  // The tensors llama.cpp looks for: names, dims {in, rank} and {rank, out}, the metadata.
  const auto file = GgufFile::open(path);
  EXPECT_EQ(file->get_string("general.type"), "adapter");
  EXPECT_EQ(file->get_string("adapter.type"), "lora");
  EXPECT_EQ(file->get_string("general.architecture"), "llama");
  const GgufTensor& ta = file->tensor("blk.1.ffn_down.weight.lora_a");
  const GgufTensor& tb = file->tensor("blk.1.ffn_down.weight.lora_b");
  EXPECT_EQ(ta.dims, (std::vector<int64_t>{model->config.d_ff, 3}));
  EXPECT_EQ(tb.dims, (std::vector<int64_t>{3, model->config.d_model}));
}

// Writes an adapter file from raw parts, so that every malformed variant can be made.
struct RawAdapter {
  std::string general_type = "adapter", adapter_type = "lora", arch = "llama";
  std::vector<std::tuple<std::string, std::vector<int64_t>>> tensors;
  std::string write(const std::string& name) const {
    GgufWriter w;
    w.add_string("general.architecture", arch);
    w.add_string("general.type", general_type);
    w.add_string("adapter.type", adapter_type);
    w.add_float32("adapter.lora.alpha", 4);
    for (const auto& [tensor, dims] : tensors) {
      const int64_t n = std::accumulate(dims.begin(), dims.end(), int64_t{1}, std::multiplies<>());
      std::vector<uint8_t> bytes(static_cast<size_t>(n) * 4, 0);
      w.add_tensor(tensor, TensorType::F32, dims, bytes);
    }
    const std::string path = testing::temp_path(name + ".gguf");
    w.write(path);
    return path;
  }
};

TEST(Lora, BadAdaptersAreRefusedWithTheReason) {
  const std::string base = tiny_model("lora-bad");
  const auto model = Model::load(base);
  const ModelConfig& c = model->config;  // d_model 64, d_ff 128
  const auto good = [] {
    return RawAdapter{.tensors = {{"blk.0.attn_q.weight.lora_a", {64, 2}},
                                  {"blk.0.attn_q.weight.lora_b", {2, 64}}}};
  };
  EXPECT_NO_THROW(LoraAdapter::load(good().write("good"), c.lora_shapes()));
  auto expect_error = [&](RawAdapter raw, const std::string& name, const std::string& message) {
    const std::string path = raw.write(name);
    EXPECT_TRUE(Contains(error_of([&] { LoraAdapter::load(path, c.lora_shapes()); }), message)) << name;
  };
  EXPECT_TRUE(Contains(error_of([&] { LoraAdapter::load(base, c.lora_shapes()); }), "is not a LoRA adapter"));
  RawAdapter r = good();
  r.adapter_type = "control_vector";
  expect_error(r, "type", "flashlm reads LoRA adapters");
  r = good();
  r.arch = "gemma3";
  expect_error(r, "arch", "adapts a 'gemma3' model, but the base model is 'llama'");
  r = good();
  r.tensors[1] = {"blk.0.attn_q.weight.lora_b", {2, 32}};
  expect_error(r, "shape", "this model needs {2, 64}");
  r = good();
  r.tensors[0] = {"blk.0.attn_q.weight.lora_a", {2, 64}};  // the old finetune's transposed A
  r.tensors[1] = {"blk.0.attn_q.weight.lora_b", {2, 64}};
  expect_error(r, "transposed", "stores lora_a transposed");
  r = good();
  r.tensors.pop_back();
  expect_error(r, "half", "has lora_a but not lora_b");
  r = good();
  r.tensors.push_back({"blk.7.attn_q.weight.lora_a", {64, 2}});
  expect_error(r, "layer", "which flashlm cannot adapt");
  r = good();
  r.tensors.push_back({"output.weight.lora_a", {64, 2}});
  expect_error(r, "output", "which flashlm cannot adapt");
  r = good();
  r.tensors.push_back({"blk.0.attn_q.weight", {64, 64}});
  expect_error(r, "suffix", "is not a LoRA tensor");
  r = RawAdapter{};
  expect_error(r, "empty", "holds no LoRA tensors");
  // A truncated file is the GGUF reader's error, not a crash.
  const std::string cut = good().write("cut");
  std::filesystem::resize_file(cut, std::filesystem::file_size(cut) - 100);
  EXPECT_TRUE(Contains(error_of([&] { LoraAdapter::load(cut, c.lora_shapes()); }), cut));
}

// The twin: the same model with W + s B A written into its F32 weights.
std::string merged_model(const std::string& base_path, const LoraAdapter& adapter, float scale,
                         const std::string& name) {
  const auto file = GgufFile::open(base_path);
  GgufWriter w;
  for (const auto& [key, value] : file->metadata()) {
    if (key != "general.alignment") w.add_value(key, value);
  }
  for (const GgufTensor& t : file->tensors()) {
    const std::span<const uint8_t> data = file->tensor_data(t);
    std::vector<uint8_t> bytes(data.begin(), data.end());
    for (size_t l = 0; l < adapter.layers.size(); ++l) {
      for (int ti = 0; ti < kLoraTargets; ++ti) {
        const auto target = static_cast<LoraTarget>(ti);
        const std::string tensor_name = lora_base_tensor_name(static_cast<int>(l), target);
        const LoraPair& p = adapter.layers[l][ti];
        if (t.name != tensor_name || p.empty()) continue;
        EXPECT_EQ(t.type, TensorType::F32);
        float* m = reinterpret_cast<float*>(bytes.data());
        const float s = LoraSet::pair_scale(adapter, p, scale);
        for (int64_t o = 0; o < p.out; ++o) {
          for (int64_t i = 0; i < p.in; ++i) {
            double delta = 0;
            for (int64_t r = 0; r < p.rank; ++r) delta += double(p.b[o * p.rank + r]) * p.a[r * p.in + i];
            m[o * p.in + i] += static_cast<float>(s * delta);
          }
        }
      }
    }
    w.add_tensor(t.name, t.type, t.dims, std::move(bytes));
  }
  const std::string path = testing::temp_path(name + ".gguf");
  w.write(path);
  return path;
}

TEST(Lora, AdaptedModelEqualsTheMergedWeights) {
  for (const char* arch : {"llama", "qwen2"}) {
    SCOPED_TRACE(arch);
    const std::string base = tiny_model(std::string("lora-merge-") + arch,
                                        {.architecture = arch, .seed = 7});
    const auto model = Model::load(base);
    const LoraAdapter adapter = testing::lora_pattern(model->config, {.rank = 4, .alpha = 8, .amplitude = 0.2});
    const std::string adapter_path = testing::temp_path(std::string("merge-") + arch + ".lora.gguf");
    adapter.save(adapter_path);
    const auto merged = Model::load(merged_model(base, adapter, 0.75f, std::string("merged-") + arch));
    const std::vector<float> base_logits = last_logits(*model, {.threads = 2});
    const std::vector<float> want = last_logits(*merged, {.threads = 2});
    const std::vector<float> got =
        last_logits(*model, {.threads = 2, .lora = {{adapter_path, 0.75f}}});
    const double moved = max_abs_diff(base_logits, want);
    EXPECT_GT(moved, 0.05) << "the adapter must change the logits for this test to mean anything";
    EXPECT_LT(max_abs_diff(got, want), 2e-3 + 1e-3 * moved);
    // Scale 0 and an adapter whose B is zero both leave the model as it is.
    EXPECT_LT(max_abs_diff(last_logits(*model, {.threads = 2, .lora = {{adapter_path, 0.0f}}}),
                           base_logits),
              1e-6);
  }
}

TEST(Lora, SeveralAdaptersAdd) {
  const std::string base = tiny_model("lora-several", {.seed = 9});
  const auto model = Model::load(base);
  const LoraAdapter attn = testing::lora_pattern(
      model->config, {.rank = 2, .alpha = 0, .amplitude = 0.2, .targets = parse_lora_targets("attn")});
  const LoraAdapter ffn = testing::lora_pattern(
      model->config, {.rank = 3, .alpha = 3, .amplitude = 0.2, .targets = parse_lora_targets("ffn")});
  const std::string pa = testing::temp_path("several-attn.gguf"), pf = testing::temp_path("several-ffn.gguf");
  attn.save(pa);
  ffn.save(pf);
  const auto merged = Model::load(merged_model(merged_model(base, attn, 0.5f, "several-1"), ffn, 1.5f, "several-2"));
  const std::vector<float> want = last_logits(*merged, {.threads = 1});
  const std::vector<float> got = last_logits(*model, {.threads = 1, .lora = {{pa, 0.5f}, {pf, 1.5f}}});
  EXPECT_LT(max_abs_diff(got, want), 3e-3);
}

TEST(Lora, FlashModelsTakeAttentionAdaptersAndRefuseFfnOnes) {
  const std::string base = tiny_model("lora-flash", {.n_layers = 3, .seed = 11});
  const std::string flm = testing::temp_path("lora-flash.flm");
  convert_to_flm(base, flm, {.force = true});
  const auto gguf_model = Model::load(base);
  const auto flash_model = Model::load(flm);
  const LoraAdapter attn = testing::lora_pattern(
      gguf_model->config, {.amplitude = 0.2, .targets = parse_lora_targets("attn")});
  const LoraAdapter all = testing::lora_pattern(gguf_model->config, {.amplitude = 0.2});
  const std::string pa = testing::temp_path("flash-attn.gguf"), pall = testing::temp_path("flash-all.gguf");
  attn.save(pa);
  all.save(pall);
  const EngineOptions with_adapter{.threads = 1, .mode = "dense", .lora = {{pa, 1.0f}}};
  const std::vector<float> want = last_logits(*flash_model, with_adapter);
  // The .flm re-quantizes the down columns: near the GGUF's figures, far from no adapter.
  const std::vector<float> gguf = last_logits(*gguf_model, with_adapter);
  EXPECT_LT(max_abs_diff(want, gguf), 5e-2);
  EXPECT_GT(max_abs_diff(want, last_logits(*flash_model, {.threads = 1, .mode = "dense"})), 0.2);
  EngineOptions hybrid = with_adapter;
  hybrid.mode = "hybrid";
  const MemoryPlan fixed = plan_engine_memory(*flash_model, hybrid);
  EXPECT_EQ(fixed.working.adapters, attn.bytes());
  const std::string budget =
      std::to_string(fixed.fixed_bytes() + fixed.ffn_bytes / 2);
  for (const char* mode : {"dense", "naive", "hybrid", "mmap"}) {
    SCOPED_TRACE(mode);
    EngineOptions o = with_adapter;
    o.mode = mode;
    if (std::string(mode) != "dense") o.mem_budget = budget;
    EXPECT_LT(max_abs_diff(last_logits(*flash_model, o), want), 1e-4);
    o.lora = {{pall, 1.0f}};
    EXPECT_TRUE(Contains(error_of([&] { Engine e(*flash_model, o); }),
                         "applies only to a GGUF model's FFN"));
  }
}

// ---- Real models against llama.cpp with the same adapter ----------------------------------

struct RealCase {
  std::string model;
  double tolerance;  // |flashlm - llama.cpp| over the top-5 logits, as tests/reference_test.cpp
  // Tokens whose logits are closer than this may swap ranks. Gemma 3's quicksort prompt is
  // the one where llama.cpp itself moves by up to 0.84 between batched and token-by-token
  // evaluation (tests/reference_test.cpp); with the adapter two of its top-5 lie 0.51 apart.
  double near_tie = 0.5;
};

class LoraReference : public ::testing::TestWithParam<RealCase> {};

TEST_P(LoraReference, TopFiveMatchLlamaCppWithTheSameAdapter) {
  const RealCase& rc = GetParam();
  const std::string root = FLASHLM_SOURCE_DIR;
  const std::string model_path = root + "/models/" + rc.model;
  if (!std::filesystem::exists(model_path)) GTEST_SKIP() << rc.model << " is not in models/";
  const std::string stem = rc.model.substr(0, rc.model.size() - 5);
  std::ifstream f(root + "/tests/data/reference/" + stem + ".lora.json");
  ASSERT_TRUE(f) << "no LoRA reference for " << rc.model;
  const nlohmann::json ref = nlohmann::json::parse(f);
  const auto model = Model::load(model_path);
  const nlohmann::json& spec = ref["adapter"];
  std::vector<LoraTarget> targets;
  for (const auto& t : spec["targets"]) targets.push_back(parse_lora_targets(t.get<std::string>())[0]);
  const LoraAdapter adapter = testing::lora_pattern(
      model->config, {.rank = spec["rank"], .alpha = spec["alpha"],
                      .amplitude = spec["amplitude"], .targets = targets});
  const std::string path = testing::temp_path(stem + ".lora.gguf");
  adapter.save(path);
  Engine engine(*model, {.context_size = 512, .lora = {{path, spec["scale"].get<float>()}}});
  Engine base(*model, {.context_size = 512});
  double max_diff = 0, max_moved = 0;
  for (size_t n = 0; n < ref["next_token"].size(); ++n) {
    const nlohmann::json& c = ref["next_token"][n];
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    const auto ids = c["top_ids"].get<std::vector<int32_t>>();
    const auto want = c["top_logits"].get<std::vector<float>>();
    engine.transformer().truncate(0);
    const std::span<const float> logits = engine.transformer().forward(prompt);
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 5, order.end(),
                      [&](int32_t x, int32_t y) { return logits[x] > logits[y]; });
    EXPECT_EQ(order[0], ids[0]) << c["prompt"];
    for (size_t i = 0; i < ids.size(); ++i) {
      EXPECT_LT(std::abs(logits[order[i]] - logits[ids[i]]), rc.near_tie) << c["prompt"] << " rank " << i;
      max_diff = std::max(max_diff, std::abs(double{logits[ids[i]]} - want[i]));
    }
    // The adapter must move the logits much more than the engines differ.
    const auto base_ids = ref["base_next_token"][n]["top_ids"].get<std::vector<int32_t>>();
    const auto base_want = ref["base_next_token"][n]["top_logits"].get<std::vector<float>>();
    base.transformer().truncate(0);
    const std::span<const float> base_logits = base.transformer().forward(prompt);
    for (size_t i = 0; i < base_ids.size(); ++i) {
      max_moved = std::max(max_moved, std::abs(double{logits[base_ids[i]]} - base_logits[base_ids[i]]));
    }
  }
  std::printf("max |flashlm - llama.cpp| over the top-5 with the adapter: %.4f; the adapter moves "
              "the base top-5 logits by up to %.2f\n", max_diff, max_moved);
  EXPECT_LT(max_diff, rc.tolerance);
  EXPECT_GT(max_moved, 4 * max_diff);
  EXPECT_GT(max_moved, 2 * rc.tolerance);
}

INSTANTIATE_TEST_SUITE_P(Models, LoraReference,
                         ::testing::Values(RealCase{"SmolLM2-135M-Instruct.Q4_1.gguf", 1.0},
                                           RealCase{"gemma-3-270m-q4_k_m.gguf", 1.25, 0.85},
                                           RealCase{"qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1.0}),
                         [](const ::testing::TestParamInfo<RealCase>& p) {
                           const std::string m = p.param.model.substr(0, 5);
                           return std::string(m == "SmolL" ? "SmolLM2" : m == "gemma" ? "Gemma3" : "Qwen");
                         });

}  // namespace
}  // namespace flashlm
