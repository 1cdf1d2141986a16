#include "flash/flash_layout.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "model/config.h"
#include "model/weights.h"
#include "quant/reference.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

std::vector<uint8_t> encode_row(TensorType type, const std::vector<float>& v) {
  std::vector<uint8_t> out(row_bytes(type, static_cast<int64_t>(v.size())));
  quantize_row_reference(type, v.data(), out.data(), static_cast<int64_t>(v.size()));
  return out;
}

std::vector<float> decode_row(TensorType type, const uint8_t* row, int64_t n) {
  std::vector<float> out(n);
  dequantize_row_reference(type, row, out.data(), n);
  return out;
}

// Every bundle must hold exactly row i of gate and up and column i of down, each encoded in
// the bundle's type from the GGUF's exact values.
void expect_bundles_match(const std::string& gguf_path, const std::string& flm_path) {
  auto gguf = GgufFile::open(gguf_path);
  const ModelConfig config = ModelConfig::from_gguf(*gguf);
  const ModelWeights w = ModelWeights::from_gguf(*gguf, config);
  auto flm = FlashModelFile::open(flm_path);
  const BundleLayout& b = flm->layout();
  std::ifstream in(flm_path, std::ios::binary);
  for (int l = 0; l < config.n_layers; ++l) {
    const FlmLayer& layer = flm->layers()[l];
    std::vector<uint8_t> bytes(layer.bytes);
    in.seekg(static_cast<std::streamoff>(layer.offset));
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    const LayerWeights& lw = w.layers[l];
    for (int i = 0; i < config.d_ff; ++i) {
      const uint8_t* bundle = bytes.data() + static_cast<size_t>(i) * b.stride;
      const auto gate = decode_row(lw.ffn_gate.type, lw.ffn_gate.row(i), config.d_model);
      const auto up = decode_row(lw.ffn_up.type, lw.ffn_up.row(i), config.d_model);
      std::vector<float> down_column(config.d_model);
      for (int r = 0; r < config.d_model; ++r) {
        down_column[r] = decode_row(lw.ffn_down.type, lw.ffn_down.row(r), config.d_ff)[i];
      }
      const auto expect_part = [&](const std::vector<float>& values, TensorType type,
                                   size_t offset, const char* what) {
        const auto expected = encode_row(type, values);
        ASSERT_EQ(std::memcmp(bundle + offset, expected.data(), expected.size()), 0)
            << what << " of neuron " << i << " in layer " << l;
      };
      expect_part(gate, b.gate_type, b.gate_offset(), "gate row");
      expect_part(up, b.up_type, b.up_offset(), "up row");
      expect_part(down_column, b.down_type, b.down_offset(), "down column");
    }
  }
}

class FlashConvert : public ::testing::TestWithParam<std::pair<TensorType, BundleType>> {};

TEST_P(FlashConvert, EveryBundleEqualsTheGgufWeights) {
  const auto [weight_type, bundle_type] = GetParam();
  const std::string gguf = testing::temp_path("convert.gguf");
  const std::string flm = testing::temp_path("convert.flm");
  testing::write_tiny_model(gguf, {.weight_type = weight_type});
  convert_to_flm(gguf, flm, {.bundle_type = bundle_type, .force = true});
  expect_bundles_match(gguf, flm);
  auto f = FlashModelFile::open(flm);
  EXPECT_NO_THROW(f->verify());
  if (bundle_type == BundleType::Source) {
    EXPECT_EQ(f->layout().up_type, weight_type);
  }
  for (const FlmLayer& l : f->layers()) EXPECT_EQ(l.offset % kFlmRegionAlignment, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    StorageTypes, FlashConvert,
    ::testing::Values(std::make_pair(TensorType::Q4_1, BundleType::Source),
                      std::make_pair(TensorType::Q8_0, BundleType::Source),
                      std::make_pair(TensorType::Q4_0, BundleType::Q8_0),
                      std::make_pair(TensorType::F32, BundleType::F16)));

TEST(FlashConvert, RefusesToOverwriteWithoutForce) {
  const std::string gguf = testing::temp_path("force.gguf");
  const std::string flm = testing::temp_path("force.flm");
  testing::write_tiny_model(gguf);
  convert_to_flm(gguf, flm, {});
  EXPECT_THROW(convert_to_flm(gguf, flm, {}), Error);
  EXPECT_NO_THROW(convert_to_flm(gguf, flm, {.force = true}));
}

TEST(FlashConvert, FailedConversionLeavesNoFile) {
  const std::string flm = testing::temp_path("never.flm");
  EXPECT_THROW(convert_to_flm("/no/such/model.gguf", flm, {}), Error);
  EXPECT_FALSE(std::filesystem::exists(flm));
  for (const auto& entry : std::filesystem::directory_iterator(
           std::filesystem::path(flm).parent_path())) {
    EXPECT_EQ(entry.path().string().find("never.flm.tmp"), std::string::npos);
  }
}

TEST(FlashConvert, CorruptBundleIsCaughtByVerify) {
  const std::string gguf = testing::temp_path("corrupt.gguf");
  const std::string flm = testing::temp_path("corrupt.flm");
  testing::write_tiny_model(gguf);
  convert_to_flm(gguf, flm, {.force = true});
  const uint64_t target = FlashModelFile::open(flm)->layers()[1].offset + 100;
  {
    std::fstream f(flm, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(static_cast<std::streamoff>(target));
    const char flipped = 0x5A;
    f.write(&flipped, 1);
  }
  try {
    FlashModelFile::open(flm)->verify();
    FAIL() << "verify should catch the corrupt byte";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1"), std::string::npos) << e.what();
  }
}

TEST(FlashConvert, TruncatedFileIsRejectedAtOpen) {
  const std::string gguf = testing::temp_path("trunc.gguf");
  const std::string flm = testing::temp_path("trunc.flm");
  testing::write_tiny_model(gguf);
  convert_to_flm(gguf, flm, {.force = true});
  const auto size = std::filesystem::file_size(flm);
  std::filesystem::resize_file(flm, size - 5000);
  EXPECT_THROW(FlashModelFile::open(flm), Error);
}

TEST(FlashConvert, GgufIsNotFlm) {
  const std::string gguf = testing::temp_path("plain.gguf");
  testing::write_tiny_model(gguf);
  EXPECT_THROW(FlashModelFile::open(gguf), Error);
}

}  // namespace
}  // namespace flashlm
