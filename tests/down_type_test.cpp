// `convert --down-type`: down columns stored in fewer bits. Every FFN path that computes from
// bundles against a slow twin that decodes the stored bundles with the scalar reference and
// computes the FFN plainly, for every down type; and the types a model cannot take refused.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/thread_pool.h"
#include "flash/loaded_model.h"
#include "sparse/flash_ffn.h"
#include "flash/flash_layout.h"
#include "flash/probe.h"
#include "quant/reference.h"
#include "sparse/streamed_ffn.h"
#include "sparse/windowed_ffn.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

constexpr int kDff = 128;
constexpr int kLayers = 2;
constexpr int kTokens = 3;

// d_model of the test model for a down type: not a multiple of 256 for the 32-value types (the
// kernels' 256-value slices end in a partial one), two K blocks for the K types.
int d_model_for(TensorType type) { return type_traits(type).block_size == 256 ? 512 : 288; }

struct DownTypeModel {
  std::string gguf, flm;
  std::unique_ptr<Model> model;
};

// F32 weights with --bundle-type source keep gate and up in F32, so their dot products are
// exact up to summation order and the stored down columns are all that differs between types.
DownTypeModel convert_with(TensorType down) {
  const std::string name = "down-" + type_name(down);
  DownTypeModel m{testing::temp_path(name + ".gguf"), testing::temp_path(name + ".flm"), nullptr};
  testing::write_tiny_model(m.gguf, {.n_layers = kLayers,
                                     .d_model = d_model_for(down),
                                     .d_ff = kDff,
                                     .weight_type = TensorType::F32});
  convert_to_flm(m.gguf, m.flm, {.down_type = down, .force = true});
  m.model = Model::load(m.flm);
  return m;
}

std::vector<uint8_t> layer_bytes(const FlashModelFile& flm, int layer) {
  std::vector<uint8_t> bytes(flm.layers()[layer].bytes);
  std::ifstream in(flm.path(), std::ios::binary);
  in.seekg(static_cast<std::streamoff>(flm.layers()[layer].offset));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return bytes;
}

// The slow twin: each bundle decoded by the scalar reference, the FFN of a SiLU-gated model
// summed neuron by neuron in double. Also returns, per token, the sum over neurons of
// |h_i| * max |down_i|: what the rounding of the fast path scales with.
struct PlainFfn {
  std::vector<float> out;
  std::vector<double> magnitude;
};

PlainFfn plain_ffn(const FlashModelFile& flm, int layer, const std::vector<float>& x) {
  const BundleLayout& b = flm.layout();
  const int d = b.d_model;
  const std::vector<uint8_t> bytes = layer_bytes(flm, layer);
  std::vector<float> gate(d), up(d), down(d);
  std::vector<double> sum(static_cast<size_t>(kTokens) * d, 0.0);
  PlainFfn result{std::vector<float>(sum.size()), std::vector<double>(kTokens, 0.0)};
  for (int i = 0; i < flm.d_ff(); ++i) {
    const uint8_t* bundle = bytes.data() + static_cast<size_t>(i) * b.stride;
    dequantize_row_reference(b.gate_type, bundle + b.gate_offset(), gate.data(), d);
    dequantize_row_reference(b.up_type, bundle + b.up_offset(), up.data(), d);
    dequantize_row_reference(b.down_type, bundle + b.down_offset(), down.data(), d);
    double down_max = 0;
    for (float v : down) down_max = std::max(down_max, std::abs(double{v}));
    for (int t = 0; t < kTokens; ++t) {
      double g = 0, u = 0;
      for (int k = 0; k < d; ++k) {
        g += double{gate[k]} * x[t * d + k];
        u += double{up[k]} * x[t * d + k];
      }
      const double h = g / (1.0 + std::exp(-g)) * u;
      for (int k = 0; k < d; ++k) sum[t * d + k] += h * down[k];
      result.magnitude[t] += std::abs(h) * down_max;
    }
  }
  for (size_t k = 0; k < sum.size(); ++k) result.out[k] = static_cast<float>(sum[k]);
  return result;
}

// Selects every neuron: the planned (windowed cache) path then computes the whole layer.
class EveryNeuron : public NeuronSelector {
 public:
  explicit EveryNeuron(int d_ff) : d_ff_(d_ff) {}
  void select(int, const float*, int64_t, std::vector<int32_t>& active) override {
    active.resize(d_ff_);
    for (int i = 0; i < d_ff_; ++i) active[i] = i;
  }

 private:
  int d_ff_;
};

int bits_per_value(TensorType type) {
  switch (type) {
    case TensorType::F16:
      return 11;  // the significand's
    case TensorType::Q8_0:
      return 8;
    case TensorType::Q6_K:
      return 6;
    case TensorType::Q5_0:
    case TensorType::Q5_1:
    case TensorType::Q5_K:
      return 5;
    default:
      return 4;
  }
}

class DownType : public ::testing::TestWithParam<TensorType> {};

TEST_P(DownType, ConvertStoresTheColumnsWithinTheTypesPrecision) {
  const TensorType type = GetParam();
  const DownTypeModel m = convert_with(type);
  const FlashModelFile& flm = *m.model->flash;
  EXPECT_EQ(flm.layout().down_type, type);
  EXPECT_EQ(flm.layout().down_bytes % 16, 0u);
  EXPECT_GE(flm.layout().down_bytes, row_bytes(type, flm.layout().d_model));
  flm.verify();

  // Each stored column against the GGUF's own F32 column: within two steps of a symmetric grid
  // of the type's bits over the column's range (half a step is rounding; the K types quantize
  // their sub-block scales and minimums too, and choose scales for the least squared error,
  // not the least largest one). A scrambled or misplaced column is off by the range itself.
  auto gguf = Model::load(m.gguf);
  const int bits = bits_per_value(type);
  const int d = flm.layout().d_model;
  for (int layer = 0; layer < kLayers; ++layer) {
    const Matrix& w = gguf->weights.layers[layer].ffn_down;  // d_model rows of d_ff
    std::vector<float> dense(static_cast<size_t>(d) * kDff), column(d);
    for (int r = 0; r < d; ++r) dequantize_row_reference(w.type, w.row(r), &dense[r * kDff], kDff);
    const std::vector<uint8_t> bytes = layer_bytes(flm, layer);
    for (int i = 0; i < kDff; ++i) {
      dequantize_row_reference(type,
                               bytes.data() + i * flm.layout().stride + flm.layout().down_offset(),
                               column.data(), d);
      float col_max = 0;
      for (int r = 0; r < d; ++r) col_max = std::max(col_max, std::abs(dense[r * kDff + i]));
      const float tol = 2 * col_max / static_cast<float>(1 << (bits - 1));
      for (int r = 0; r < d; ++r) {
        ASSERT_NEAR(column[r], dense[r * kDff + i], tol)
            << "layer " << layer << " neuron " << i << " element " << r;
      }
    }
  }
}

TEST_P(DownType, EveryFlashPathEqualsThePlainFfnOfTheStoredBundles) {
  const TensorType type = GetParam();
  const DownTypeModel m = convert_with(type);
  const FlashModelFile& flm = *m.model->flash;
  const ModelConfig& config = m.model->config;
  ASSERT_EQ(config.activation, Activation::SiLU);
  const int d = config.d_model;
  ThreadPool pool(2);
  const std::vector<float> x = testing::random_floats(static_cast<size_t>(kTokens) * d, 3);

  // A budget with a third of the FFN in DRAM beyond what `mode` needs besides.
  const auto part_resident = [&](FfnMode mode, SparseReads reads = SparseReads::Planned) {
    const MemoryPlan roomy = plan_memory(flm, mode, ~uint64_t{0} / 4, reads);
    return roomy.fixed_bytes() + roomy.ffn_bytes / 3;
  };
  std::vector<std::pair<std::string, std::unique_ptr<FeedForward>>> paths;
  for (const auto& [name, mode] : {std::pair{"dense", FfnMode::Dense},
                                   {"naive", FfnMode::Naive},
                                   {"hybrid", FfnMode::Hybrid},
                                   {"mmap", FfnMode::Mmap}}) {
    const MemoryPlan plan =
        plan_memory(flm, mode, mode == FfnMode::Dense ? ~uint64_t{0} / 4 : part_resident(mode));
    paths.emplace_back(
        name, std::make_unique<FlashFeedForward>(flm, config, plan, IoBackend::Auto, pool));
  }
  const std::vector<float> no_thresholds(kLayers, 0.0f);
  const MemoryPlan streamed_plan =
      plan_memory(flm, FfnMode::Sparse, part_resident(FfnMode::Sparse, SparseReads::Streamed),
                  SparseReads::Streamed);
  ASSERT_GT(streamed_plan.resident_neurons_per_layer, 0);
  ASSERT_LT(streamed_plan.resident_neurons_per_layer, kDff);
  paths.emplace_back("streamed sparse",
                     std::make_unique<StreamedSparseFfn>(flm, config, streamed_plan, no_thresholds,
                                                         nullptr, IoBackend::Auto, pool));
  EveryNeuron every(kDff);
  const MemoryPlan planned_plan =
      plan_memory(flm, FfnMode::Sparse, part_resident(FfnMode::Sparse), SparseReads::Planned);
  paths.emplace_back(
      "planned sparse (neuron cache)",
      std::make_unique<WindowedSparseFfn>(flm, config, planned_plan, 2, no_thresholds, every,
                                          IoBackend::Auto, default_device_profile().planner, pool));

  std::vector<float> batched(static_cast<size_t>(kTokens) * d), single(d);
  // Each pass runs the layers in order, as the transformer does.
  uint64_t pass = 0;
  const auto run = [&](FeedForward& f, int layer, const float* in, int64_t n, float* out) {
    if (layer == 0) ++pass;
    f.forward({.pass = pass, .layer = layer, .next_layer = (layer + 1) % kLayers, .n_tokens = n},
              in, out);
  };
  for (auto& [name, ffn] : paths) {
    // Two tokens' steps, so the windowed cache and the streamed read-ahead are exercised.
    for (int step = 0; step < 2; ++step) {
      for (int layer = 0; layer < kLayers; ++layer) {
        const PlainFfn expected = plain_ffn(flm, layer, x);
        run(*ffn, layer, x.data(), kTokens, batched.data());
        for (int t = 0; t < kTokens; ++t) {
          const double tol = 1e-5 * expected.magnitude[t] + 1e-6;
          for (int k = 0; k < d; ++k) {
            ASSERT_NEAR(batched[t * d + k], expected.out[t * d + k], tol)
                << name << ", layer " << layer << ", token " << t << ", element " << k;
          }
        }
      }
    }
    // One token alone: bit for bit its row of the batch (batched decoding computes what
    // token-by-token decoding does).
    for (int layer = 0; layer < kLayers; ++layer) {
      run(*ffn, layer, x.data(), kTokens, batched.data());
      for (int t = 0; t < kTokens; ++t) {
        run(*ffn, layer, x.data() + t * d, 1, single.data());
        for (int k = 0; k < d; ++k) {
          ASSERT_EQ(batched[t * d + k], single[k])
              << name << ", layer " << layer << ", token " << t << ", element " << k;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllDownTypes, DownType, ::testing::ValuesIn(down_column_types()),
                         [](const ::testing::TestParamInfo<TensorType>& p) {
                           return type_name(p.param);
                         });

TEST(DownTypeConvert, DefaultsKeepTheFilesOfBefore) {
  const std::string gguf = testing::temp_path("defaults.gguf");
  testing::write_tiny_model(gguf, {.weight_type = TensorType::Q4_1});
  const std::array<std::pair<BundleType, TensorType>, 3> defaults = {
      std::pair{BundleType::Source, TensorType::Q8_0},
      {BundleType::Q8_0, TensorType::Q8_0},
      {BundleType::F16, TensorType::F16}};
  for (const auto& [bundle_type, down] : defaults) {
    const std::string flm = testing::temp_path("defaults.flm");
    convert_to_flm(gguf, flm, {.bundle_type = bundle_type, .force = true});
    EXPECT_EQ(FlashModelFile::open(flm)->layout().down_type, down);
  }
  // --down-type with another bundle type: only the down column changes.
  const std::string flm = testing::temp_path("q8-bundles-q4-down.flm");
  convert_to_flm(gguf, flm,
                 {.bundle_type = BundleType::Q8_0, .down_type = TensorType::Q4_0, .force = true});
  const auto file = FlashModelFile::open(flm);
  const BundleLayout& b = file->layout();
  EXPECT_EQ(b.gate_type, TensorType::Q8_0);
  EXPECT_EQ(b.up_type, TensorType::Q8_0);
  EXPECT_EQ(b.down_type, TensorType::Q4_0);
}

TEST(DownTypeConvert, NamesParseAndUnknownOnesAreRefused) {
  EXPECT_EQ(parse_down_type("q4_k"), TensorType::Q4_K);
  EXPECT_EQ(parse_down_type("q5_1"), TensorType::Q5_1);
  EXPECT_EQ(parse_down_type("f16"), TensorType::F16);
  try {
    parse_down_type("q3_k");
    FAIL() << "q3_k is not a down type";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q4_0"), std::string::npos) << e.what();
  }
}

// A K type on a d_model that is not a multiple of 256: the command fails before writing
// anything, and says which types this model can take.
TEST(DownTypeConvert, TheCommandRefusesATypeTheModelCannotTake) {
  const std::string gguf = testing::temp_path("refuse.gguf");
  const std::string flm = testing::temp_path("refuse.flm");
  testing::write_tiny_model(gguf, {.d_model = 64, .weight_type = TensorType::Q8_0});
  const std::string command =
      std::string(FLASHLM_BINARY) + " convert -m " + gguf + " -o " + flm + " --down-type q4_k 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  std::array<char, 256> chunk;
  while (std::fgets(chunk.data(), chunk.size(), pipe)) output += chunk.data();
  const int status = ::pclose(pipe);
  EXPECT_NE(status, 0) << output;
  EXPECT_NE(output.find("--down-type q4_k"), std::string::npos) << output;
  EXPECT_NE(output.find("d_model 64 is not a multiple of 256"), std::string::npos) << output;
  EXPECT_NE(output.find("use one of f16, q8_0, q5_1, q5_0, q4_1, q4_0"), std::string::npos)
      << output;
  EXPECT_FALSE(std::filesystem::exists(flm));
  for (const auto& entry :
       std::filesystem::directory_iterator(std::filesystem::path(flm).parent_path())) {
    EXPECT_EQ(entry.path().string().find(".tmp-"), std::string::npos) << entry.path();
  }
}

}  // namespace
}  // namespace flashlm
