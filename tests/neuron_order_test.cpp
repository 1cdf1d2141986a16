// Neuron order in the flash layout (`convert --neuron-order`): a permuted file computes what the
// natural one does and holds the same bundles in the given order; bad orders are refused; the
// importance ranking is a deterministic permutation that puts a dominant neuron first.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/engine.h"
#include "flash/flash_layout.h"
#include "flash/loaded_model.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "sparse/calibrate.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

constexpr int kLayers = 3, kDModel = 64, kDff = 128;

const std::vector<int32_t> kPrompt = {84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114};

std::vector<std::vector<int32_t>> random_order(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> order(kLayers, std::vector<int32_t>(kDff));
  for (auto& layer : order) {
    std::iota(layer.begin(), layer.end(), 0);
    std::shuffle(layer.begin(), layer.end(), rng);
  }
  return order;
}

std::vector<float> dense_logits(const std::string& path) {
  auto model = Model::load(path);
  Engine engine(*model, {.threads = 2, .context_size = 64, .max_batch = 8, .mode = "dense"});
  std::vector<float> out;
  for (size_t i = 0; i < kPrompt.size(); ++i) {
    auto logits = engine.transformer().forward(std::span(&kPrompt[i], 1));
    out.insert(out.end(), logits.begin(), logits.end());
  }
  return out;
}

std::string tiny_gguf(const std::string& name, TensorType weights) {
  const std::string path = testing::temp_path(name);
  testing::write_tiny_model(
      path, {.n_layers = kLayers, .d_model = kDModel, .d_ff = kDff, .weight_type = weights});
  return path;
}

// Byte-level tokens of the tiny model: any text of `n` bytes is n tokens (plus BOS).
std::string calibration_text(size_t n) {
  std::string text;
  const std::string words = "the quick brown fox jumps over the lazy dog while it rains; ";
  while (text.size() < n) text += words;
  return text;
}

CalibrationOptions tiny_calibration() {
  return {.threads = 2, .max_tokens = 128, .segment_tokens = 64};
}

class NeuronOrder : public ::testing::TestWithParam<TensorType> {};

TEST_P(NeuronOrder, PermutedFileComputesTheSameAndHoldsTheSameBundles) {
  const std::string gguf = tiny_gguf("order.gguf", GetParam());
  const std::string natural = testing::temp_path("natural.flm");
  const std::string permuted = testing::temp_path("permuted.flm");
  const auto order = random_order(7);
  convert_to_flm(gguf, natural, {.force = true});
  convert_to_flm(gguf, permuted, {.force = true, .neuron_order = order});

  auto a = FlashModelFile::open(natural);
  auto b = FlashModelFile::open(permuted);
  EXPECT_EQ(a->neuron_order(), "natural");
  EXPECT_FALSE(a->gguf().has("flashlm.neuron_order"));
  EXPECT_EQ(b->neuron_order(), "custom");
  EXPECT_NO_THROW(b->verify());
  const size_t stride = a->layout().stride;
  ASSERT_EQ(stride, b->layout().stride);
  for (int l = 0; l < kLayers; ++l) {
    const auto from = a->read_layer(l), to = b->read_layer(l);
    for (int j = 0; j < kDff; ++j) {
      ASSERT_EQ(std::memcmp(to.data() + size_t(j) * stride,
                            from.data() + size_t(order[l][j]) * stride, stride),
                0)
          << "bundle " << j << " of layer " << l << " should be natural bundle " << order[l][j];
    }
  }

  const auto expected = dense_logits(natural);
  const auto got = dense_logits(permuted);
  ASSERT_EQ(got.size(), expected.size());
  double scale = 0, diff = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    scale = std::max(scale, std::abs(double{expected[i]}));
    diff = std::max(diff, std::abs(double{got[i]} - expected[i]));
  }
  EXPECT_LT(diff, 1e-4 * std::max(1.0, scale)) << "largest logit " << scale;
}

INSTANTIATE_TEST_SUITE_P(WeightTypes, NeuronOrder,
                         ::testing::Values(TensorType::F32, TensorType::Q4_1));

TEST(NeuronOrder, NameIsRecorded) {
  const std::string gguf = tiny_gguf("named.gguf", TensorType::F32);
  const std::string flm = testing::temp_path("named.flm");
  convert_to_flm(gguf, flm,
                 {.force = true, .neuron_order = random_order(3), .neuron_order_name = "importance"});
  EXPECT_EQ(FlashModelFile::open(flm)->neuron_order(), "importance");
}

TEST(NeuronOrder, NonPermutationsAreRefused) {
  const std::string gguf = tiny_gguf("bad.gguf", TensorType::F32);
  const std::string flm = testing::temp_path("bad.flm");
  auto expect_refused = [&](std::vector<std::vector<int32_t>> order, const std::string& words) {
    try {
      convert_to_flm(gguf, flm, {.force = true, .neuron_order = std::move(order)});
      ADD_FAILURE() << "an order that is not a permutation was accepted (" << words << ")";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
    EXPECT_FALSE(std::filesystem::exists(flm));
  };
  auto order = random_order(5);
  order[1][10] = order[1][11];
  expect_refused(order, "appears twice");
  order = random_order(5);
  order[2][0] = kDff;
  expect_refused(order, "outside 0..127");
  order = random_order(5);
  order[0][3] = -1;
  expect_refused(order, "outside");
  order = random_order(5);
  order[0].pop_back();
  expect_refused(order, "layer 0 has 127 entries");
  order = random_order(5);
  order.pop_back();
  expect_refused(order, "2 layers; the model has 3");
}

// The tiny model's GGUF with column `neuron` of layer `layer`'s down projection scaled.
void write_with_scaled_down_column(const std::string& from, const std::string& to, int layer,
                                   int neuron, float factor) {
  auto in = GgufFile::open(from);
  GgufWriter w;
  for (const auto& [key, value] : in->metadata()) {
    if (key != "general.alignment") w.add_value(key, value);
  }
  const std::string target = "blk." + std::to_string(layer) + ".ffn_down.weight";
  for (const GgufTensor& t : in->tensors()) {
    const auto data = in->tensor_data(t);
    if (t.name != target) {
      w.add_tensor_view(t.name, t.type, t.dims, data);
      continue;
    }
    ASSERT_EQ(t.type, TensorType::F32);
    ASSERT_EQ(t.dims[0], kDff);  // rows of d_ff values: column i is element i of each row
    std::vector<float> values(data.size() / sizeof(float));
    std::memcpy(values.data(), data.data(), data.size());
    for (size_t r = 0; r < values.size() / kDff; ++r) values[r * kDff + neuron] *= factor;
    std::vector<uint8_t> bytes(data.size());
    std::memcpy(bytes.data(), values.data(), bytes.size());
    w.add_tensor(t.name, t.type, t.dims, std::move(bytes));
  }
  w.write(to);
}

TEST(NeuronImportance, IsADeterministicDescendingPermutation) {
  const std::string gguf = tiny_gguf("rank.gguf", TensorType::Q8_0);
  const std::string flm = testing::temp_path("rank.flm");
  convert_to_flm(gguf, flm, {.force = true});
  auto model = Model::load(flm);
  const std::string text = calibration_text(400);
  const NeuronImportance first =
      rank_neurons_by_importance(*model, text, tiny_calibration(), nullptr);
  const NeuronImportance second =
      rank_neurons_by_importance(*model, text, tiny_calibration(), nullptr);
  EXPECT_EQ(first.tokens, 128);
  EXPECT_EQ(first.order, second.order);
  EXPECT_EQ(first.importance, second.importance);
  EXPECT_NO_THROW(check_neuron_order(first.order, kLayers, kDff));
  for (int l = 0; l < kLayers; ++l) {
    const auto& imp = first.importance[l];
    for (int j = 1; j < kDff; ++j) {
      const int32_t a = first.order[l][j - 1], b = first.order[l][j];
      EXPECT_TRUE(imp[a] > imp[b] || (imp[a] == imp[b] && a < b))
          << "layer " << l << " positions " << j - 1 << ", " << j;
    }
    EXPECT_GT(imp[first.order[l][0]], 0);
  }
  const double quarter = first.share_of_first(0.25), half = first.share_of_first(0.5);
  EXPECT_GT(quarter, 0.25);
  EXPECT_GT(half, quarter);
  EXPECT_LE(half, 1.0);
  EXPECT_DOUBLE_EQ(first.share_of_first(1.0), 1.0);

  // The ranked order converts, and the file then computes what the natural one does.
  const std::string ranked = testing::temp_path("ranked.flm");
  convert_to_flm(gguf, ranked,
                 {.force = true, .neuron_order = first.order, .neuron_order_name = "importance"});
  const auto expected = dense_logits(flm), got = dense_logits(ranked);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expected[i], 1e-3) << i;
}

TEST(NeuronImportance, ANeuronWithAHugeDownColumnComesFirst) {
  const std::string gguf = tiny_gguf("plain-rank.gguf", TensorType::F32);
  const std::string scaled = testing::temp_path("scaled-rank.gguf");
  const int layer = 1, neuron = 37;
  write_with_scaled_down_column(gguf, scaled, layer, neuron, 1000.0f);
  const std::string flm = testing::temp_path("scaled-rank.flm");
  convert_to_flm(scaled, flm, {.force = true});
  auto model = Model::load(flm);
  const NeuronImportance r =
      rank_neurons_by_importance(*model, calibration_text(400), tiny_calibration(), nullptr);
  EXPECT_EQ(r.order[layer][0], neuron);
  EXPECT_NE(r.order[0][0], neuron);  // layers before it do not see the change
}

TEST(NeuronImportance, NeedsAFlashModel) {
  const std::string gguf = tiny_gguf("not-flm.gguf", TensorType::F32);
  auto model = Model::load(gguf);
  EXPECT_THROW(rank_neurons_by_importance(*model, calibration_text(400), tiny_calibration(),
                                          nullptr),
               Error);
}

}  // namespace
}  // namespace flashlm
