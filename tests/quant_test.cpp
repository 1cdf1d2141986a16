// The quantized formats, three ways: hand-made blocks whose values are worked out from the
// block layout (not from flashlm's own decoder), the Highway kernels against the scalar
// reference on random data, and the reference quantizer's round-trip error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <hwy/targets.h>

#include "quant/blocks.h"
#include "quant/fp16.h"
#include "quant/kernels.h"
#include "quant/reference.h"
#include "quant/types.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

using testing::random_floats;

const TensorType kAllTypes[] = {TensorType::F32,  TensorType::F16,  TensorType::BF16,
                                TensorType::Q4_0, TensorType::Q4_1, TensorType::Q5_0,
                                TensorType::Q5_1, TensorType::Q8_0, TensorType::Q4_K,
                                TensorType::Q5_K, TensorType::Q6_K};

bool is_float(TensorType t) {
  return t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16;
}

std::vector<float> dequantized(TensorType type, const void* block, int64_t n) {
  std::vector<float> out(n);
  dequantize_row_reference(type, block, out.data(), n);
  return out;
}

// ---- (a) hand-made blocks -------------------------------------------------------------------

TEST(QuantBlocks, F16AndBF16BitPatterns) {
  // 0x3C00 = 1.0, 0xC000 = -2.0, 0x3555 = 0.333251953125 (1 + 341/1024) / 4, 0x0001 = 2^-24.
  const uint16_t f16[4] = {0x3C00, 0xC000, 0x3555, 0x0001};
  EXPECT_EQ(dequantized(TensorType::F16, f16, 4),
            (std::vector<float>{1.0f, -2.0f, 0.333251953125f, std::ldexp(1.0f, -24)}));
  // BF16 is the top half of an IEEE float: 0x3F80 = 1.0, 0xC040 = -3.0, 0x4049 = 3.140625.
  const uint16_t bf16[4] = {0x3F80, 0xC040, 0x4049, 0x0000};
  EXPECT_EQ(dequantized(TensorType::BF16, bf16, 4),
            (std::vector<float>{1.0f, -3.0f, 3.140625f, 0.0f}));
}

TEST(QuantBlocks, Q4_0) {
  // d = 0.5 (fp16 0x3800); byte j holds element j (low nibble) and element j + 16 (high);
  // x = (nibble - 8) * d.
  BlockQ4_0 b{};
  b.d = 0x3800;
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const std::vector<float> y = dequantized(TensorType::Q4_0, &b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], (j - 8) * 0.5f) << j;
    EXPECT_EQ(y[j + 16], (15 - j - 8) * 0.5f) << j + 16;
  }
}

TEST(QuantBlocks, Q4_1) {
  // d = 0.25 (0x3400), m = -1.0 (0xBC00): x = nibble * d + m.
  BlockQ4_1 b{};
  b.d = 0x3400;
  b.m = 0xBC00;
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | (3 << 4));
  const std::vector<float> y = dequantized(TensorType::Q4_1, &b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], j * 0.25f - 1.0f) << j;
    EXPECT_EQ(y[j + 16], 3 * 0.25f - 1.0f) << j + 16;
  }
}

TEST(QuantBlocks, Q5_0) {
  // Bit j of the little-endian 32-bit qh is the 5th bit of element j: x = (q - 16) * d, d = 2.
  BlockQ5_0 b{};
  b.d = 0x4000;
  const uint32_t qh = 0xF0F0A5A5;
  std::memcpy(b.qh, &qh, 4);
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const std::vector<float> y = dequantized(TensorType::Q5_0, &b, 32);
  for (int j = 0; j < 32; ++j) {
    const int nibble = j < 16 ? j : 15 - (j - 16);
    const int q = nibble | static_cast<int>(((qh >> j) & 1) << 4);
    EXPECT_EQ(y[j], (q - 16) * 2.0f) << j;
  }
}

TEST(QuantBlocks, Q5_1) {
  // As Q5_0 with a minimum and no offset: x = q * d + m, d = 0.5 (0x3800), m = -3 (0xC200).
  BlockQ5_1 b{};
  b.d = 0x3800;
  b.m = 0xC200;
  const uint32_t qh = 0x0FF05AA5;
  std::memcpy(b.qh, &qh, 4);
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>((15 - j) | (j << 4));
  const std::vector<float> y = dequantized(TensorType::Q5_1, &b, 32);
  for (int j = 0; j < 32; ++j) {
    const int nibble = j < 16 ? 15 - j : j - 16;
    const int q = nibble | static_cast<int>(((qh >> j) & 1) << 4);
    EXPECT_EQ(y[j], q * 0.5f - 3.0f) << j;
  }
}

TEST(QuantBlocks, Q8_0) {
  // d = 0.25 (0x3400); x = q * d with q the signed byte.
  BlockQ8_0 b{};
  b.d = 0x3400;
  for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<int8_t>(j * 8 - 128);
  const std::vector<float> y = dequantized(TensorType::Q8_0, &b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], (j * 8 - 128) * 0.25f) << j;
}

TEST(QuantBlocks, Q4_K) {
  // d = 1.0 (0x3C00), dmin = 0.5 (0x3800). Eight sub-blocks of 32 with 6-bit scale s and min m:
  // x = d * s * q - dmin * m. Packing of `scales` (12 bytes): for j < 4, byte j holds s_j and
  // byte j + 4 holds m_j (low 6 bits); for j >= 4, byte j + 4 holds the low 4 bits of s_j
  // (low nibble) and of m_j (high nibble), and the top 2 bits of s_j and m_j sit in bits 6-7
  // of bytes j - 4 and j.
  const int s[8] = {1, 2, 3, 4, 17, 33, 50, 63};
  const int m[8] = {0, 1, 2, 3, 20, 40, 5, 63};
  BlockQ4_K b{};
  b.d = 0x3C00;
  b.dmin = 0x3800;
  const uint8_t scales[12] = {
      1 | (1 << 6), 2 | (2 << 6), 3 | (3 << 6), 4 | (3 << 6),  // s0..s3 + top bits of s4..s7
      0 | (1 << 6), 1 | (2 << 6), 2 | (0 << 6), 3 | (3 << 6),  // m0..m3 + top bits of m4..m7
      (17 & 15) | ((20 & 15) << 4), (33 & 15) | ((40 & 15) << 4),
      (50 & 15) | ((5 & 15) << 4), (63 & 15) | ((63 & 15) << 4)};
  std::memcpy(b.scales, scales, 12);
  // Sub-blocks 2k and 2k + 1 share bytes 32k..32k+31: low nibbles, then high nibbles.
  for (int i = 0; i < 128; ++i) b.qs[i] = static_cast<uint8_t>((i % 16) | ((15 - i % 16) << 4));
  const std::vector<float> y = dequantized(TensorType::Q4_K, &b, 256);
  for (int e = 0; e < 256; ++e) {
    const int sub = e / 32, l = e % 32;
    const uint8_t byte = b.qs[32 * (sub / 2) + l];
    const int q = sub % 2 == 0 ? byte & 15 : byte >> 4;
    EXPECT_EQ(y[e], 1.0f * s[sub] * q - 0.5f * m[sub]) << e;
  }
}

TEST(QuantBlocks, Q5_K) {
  // Q4_K's scales, mins and nibbles (see above) plus a 5th bit per element: bit `sub` of
  // qh[l] for element l of sub-block `sub`. x = d * s * q - dmin * m, d = 0.5, dmin = 0.25.
  const int s[8] = {63, 1, 5, 9, 2, 44, 31, 8};
  const int m[8] = {3, 0, 63, 1, 16, 9, 33, 60};
  BlockQ5_K b{};
  b.d = 0x3800;
  b.dmin = 0x3400;
  for (int j = 0; j < 4; ++j) {
    b.scales[j] = static_cast<uint8_t>(s[j] | ((s[j + 4] >> 4) << 6));
    b.scales[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
    b.scales[j + 8] = static_cast<uint8_t>((s[j + 4] & 15) | ((m[j + 4] & 15) << 4));
  }
  for (int i = 0; i < 128; ++i) b.qs[i] = static_cast<uint8_t>((i * 5) % 16 | (((i * 3) % 16) << 4));
  for (int l = 0; l < 32; ++l) b.qh[l] = static_cast<uint8_t>(l * 37 + 11);
  const std::vector<float> y = dequantized(TensorType::Q5_K, &b, 256);
  for (int e = 0; e < 256; ++e) {
    const int sub = e / 32, l = e % 32;
    const uint8_t byte = b.qs[32 * (sub / 2) + l];
    const int q = (sub % 2 == 0 ? byte & 15 : byte >> 4) | (((b.qh[l] >> sub) & 1) << 4);
    EXPECT_EQ(y[e], 0.5f * s[sub] * q - 0.25f * m[sub]) << e;
  }
}

TEST(QuantBlocks, Q6_K) {
  // d = 0.5 (0x3800); 16 sub-blocks of 16 with int8 scales; q is 6 bits, x = d * scale * (q - 32).
  // Each half of 128 elements uses 64 bytes of ql and 32 of qh. Element r = 32 g + l of a half
  // (g = 0..3, l = 0..31): low 4 bits in ql[l + 32 (g & 1)], low nibble for g < 2, high for
  // g >= 2; top 2 bits in qh[l] at bits 2g..2g+1; scale index 8 * half + l / 16 + 2 g.
  BlockQ6_K b{};
  b.d = 0x3800;
  for (int i = 0; i < 16; ++i) b.scales[i] = static_cast<int8_t>(i * 9 - 70);
  int q[256];
  for (int e = 0; e < 256; ++e) q[e] = (e * 7) % 64;
  for (int e = 0; e < 256; ++e) {
    const int half = e / 128, g = (e % 128) / 32, l = e % 32;
    uint8_t& ql = b.ql[64 * half + l + 32 * (g & 1)];
    ql |= static_cast<uint8_t>((q[e] & 15) << (g < 2 ? 0 : 4));
    b.qh[32 * half + l] |= static_cast<uint8_t>((q[e] >> 4) << (2 * g));
  }
  const std::vector<float> y = dequantized(TensorType::Q6_K, &b, 256);
  for (int e = 0; e < 256; ++e) {
    const int half = e / 128, g = (e % 128) / 32, l = e % 32;
    const int scale = b.scales[8 * half + l / 16 + 2 * g];
    EXPECT_EQ(y[e], 0.5f * scale * (q[e] - 32)) << e;
  }
}

// ---- (b) Highway kernels against the scalar reference ---------------------------------------

// Every SIMD target compiled in (Highway's dynamic dispatch) that this CPU can run, the best
// first: on an AVX-512 VNNI machine AVX3_DL, AVX3, AVX2, SSE4, SSSE3 and EMU128 (scalar
// emulation). Each kernel test runs once per target, forced with SetSupportedTargetsForTest.
std::vector<int64_t> kernel_targets() { return hwy::SupportedAndGeneratedTargets(); }

class ForcedTarget {
 public:
  explicit ForcedTarget(int64_t target) { hwy::SetSupportedTargetsForTest(target); }
  ~ForcedTarget() { hwy::SetSupportedTargetsForTest(0); }  // back to what the CPU supports
};

class QuantKernels : public ::testing::TestWithParam<std::tuple<TensorType, int64_t>> {
 protected:
  TensorType param_type() const { return std::get<0>(GetParam()); }

  static constexpr int64_t kN = 1024;  // four K-quant super-blocks, 32 simple blocks
  static constexpr int kRows = 7;

  void SetUp() override {
    target_.emplace(std::get<1>(GetParam()));
    ASSERT_EQ(kernel_target(), hwy::TargetName(std::get<1>(GetParam())));
    const TensorType type = param_type();
    stride_ = row_bytes(type, kN);
    weights_.resize(stride_ * kRows);
    for (int r = 0; r < kRows; ++r) {
      const std::vector<float> w = random_floats(kN, 100 + r);
      quantize_row_reference(type, w.data(), weights_.data() + r * stride_, kN);
    }
  }

  // The input the kernels actually multiply with: for quantized weights they quantize x to
  // int8 blocks first (PreparedInput), so the reference gets those same values and only the
  // arithmetic is compared.
  static std::vector<float> effective_input(const PreparedInput& p, const std::vector<float>& x) {
    if (is_float(p.weight_type())) return x;
    std::vector<float> out(kN);
    for (int64_t i = 0; i < kN; ++i) out[i] = static_cast<float>(p.q()[i]) * p.scale()[i / p.group()];
    return out;
  }

  // Allowed difference from the double-accumulated reference. The kernels sum exact integer
  // products per block, then add block results in float in a different order; each float
  // operation contributes at most 2^-24 of the magnitudes summed, and there are at most
  // n / 32 + lanes additions in a chain, so 1e-5 * sum |w_i x_i| (about 170 ulps) covers it.
  // K-quants subtract dmin * m * sum(x) from d * s * sum(q x): both terms are bounded by
  // max |w| * sum |x|, which is added to the scale.
  static float tolerance(TensorType type, const uint8_t* row, const std::vector<float>& x) {
    std::vector<float> w(kN);
    dequantize_row_reference(type, row, w.data(), kN);
    double sum = 0, sum_x = 0, max_w = 0;
    for (int64_t i = 0; i < kN; ++i) {
      sum += std::abs(static_cast<double>(w[i]) * x[i]);
      sum_x += std::abs(x[i]);
      max_w = std::max(max_w, std::abs(static_cast<double>(w[i])));
    }
    return static_cast<float>(1e-5 * (sum + max_w * sum_x)) + 1e-6f;
  }

  std::optional<ForcedTarget> target_;
  size_t stride_ = 0;
  std::vector<uint8_t> weights_;
};

TEST_P(QuantKernels, DotMatvecAndMatmulMatchReference) {
  const TensorType type = param_type();
  // A full tile of 4 and a remainder of each width, and batches smaller than a tile.
  for (const int kTokens : {6, 7, 5, 3, 2}) {
    SCOPED_TRACE(::testing::Message() << kTokens << " tokens");
    std::vector<std::vector<float>> xs;
    std::vector<PreparedInput> prepared(kTokens);
    for (int t = 0; t < kTokens; ++t) {
      xs.push_back(random_floats(kN, 7 + t, 2.0f));
      prepared[t].prepare(type, xs[t].data(), kN);
    }
    std::vector<float> matvec(kRows), matmul(kTokens * kRows);
    matvec_rows(type, weights_.data(), stride_, prepared[0], 0, kRows, matvec.data());
    matmul_rows(type, weights_.data(), stride_, prepared.data(), kTokens, 0, kRows, matmul.data(),
                kRows);
    for (int t = 0; t < kTokens; ++t) {
      const std::vector<float> x = effective_input(prepared[t], xs[t]);
      for (int r = 0; r < kRows; ++r) {
        const uint8_t* row = weights_.data() + r * stride_;
        const float expected = dot_reference(type, row, x.data(), kN);
        const float tol = tolerance(type, row, x);
        EXPECT_NEAR(dot(type, row, prepared[t]), expected, tol) << "token " << t << " row " << r;
        EXPECT_NEAR(matmul[t * kRows + r], expected, tol) << "token " << t << " row " << r;
        // Bit for bit what the one-token kernel gives: a batched forward pass must compute what
        // token-by-token decoding computes (the next layer's int8 quantization would amplify
        // any rounding difference).
        EXPECT_EQ(matmul[t * kRows + r], dot(type, row, prepared[t]))
            << "token " << t << " row " << r << ": the batched kernel rounds otherwise";
        if (t == 0) {
          EXPECT_NEAR(matvec[r], expected, tol) << "row " << r;
        }
      }
    }
    // A sub-range of rows writes only its own outputs.
    std::vector<float> part(kRows, -7.0f);
    matvec_rows(type, weights_.data(), stride_, prepared[0], 2, 5, part.data());
    EXPECT_EQ(part[0], -7.0f);
    EXPECT_EQ(part[6], -7.0f);
    EXPECT_NEAR(part[3], matvec[3], tolerance(type, weights_.data() + 3 * stride_, xs[0]));
  }
}

TEST_P(QuantKernels, DequantizeAndAxpyMatchReference) {
  const TensorType type = param_type();
  for (int r = 0; r < kRows; ++r) {
    const uint8_t* row = weights_.data() + r * stride_;
    std::vector<float> expected(kN);
    dequantize_row_reference(type, row, expected.data(), kN);
    float row_max = 0;
    for (float v : expected) row_max = std::max(row_max, std::abs(v));
    // The vector kernels against the reference (elsewhere dequantize_row is the reference
    // itself, which the hand-made blocks above check).
    if (has_dequantize_kernel(type)) {
      std::vector<float> got(kN, std::nanf(""));
      dequantize_row(type, row, got.data(), kN);
      // The same stored numbers, maybe combined with a fused multiply-add: a few roundings of
      // terms at most the row's largest value, so a few ulps of that.
      const float tol = 1e-6f * row_max;
      for (int64_t i = 0; i < kN; ++i) {
        ASSERT_NEAR(got[i], expected[i], tol) << "row " << r << " element " << i;
      }
    }
    // y += a * w: one more multiply and add per element.
    const float a = -0.75f;
    std::vector<float> y = random_floats(kN, 55 + r), y0 = y;
    axpy_row(type, row, a, y.data(), kN);
    for (int64_t i = 0; i < kN; ++i) {
      ASSERT_NEAR(y[i], y0[i] + a * expected[i], 1e-6f * (1.0f + std::abs(a) * row_max))
          << "row " << r << " element " << i;
    }
  }
}

TEST_P(QuantKernels, AxpyOfSeveralTokensEqualsOneTokenAtATime) {
  const TensorType type = param_type();
  constexpr int kTokens = 5;
  const float a[kTokens] = {0.5f, 0.0f, -1.25f, 3.0e-3f, 7.0f};  // a zero: the token is skipped
  for (int r = 0; r < kRows; ++r) {
    const uint8_t* row = weights_.data() + r * stride_;
    std::vector<float> batched = random_floats(kTokens * kN, 60 + r), single = batched;
    axpy_row_tokens(type, row, a, kTokens, batched.data(), kN, kN);
    for (int t = 0; t < kTokens; ++t) {
      if (a[t] != 0.0f) axpy_row(type, row, a[t], single.data() + t * kN, kN);
    }
    for (int64_t i = 0; i < kTokens * kN; ++i) {
      ASSERT_EQ(batched[i], single[i]) << "row " << r << " token " << i / kN << " element "
                                       << i % kN;
    }
  }
}

TEST_P(QuantKernels, AxpyOfSeveralRowsAndTokensEqualsOneAtATime) {
  const TensorType type = param_type();
  // Batches of up to two register groups of 8 tokens and a remainder; zeros are skipped.
  for (const int tokens : {1, 3, 8, 11}) {
    std::vector<float> a(static_cast<size_t>(kRows) * tokens);
    for (size_t i = 0; i < a.size(); ++i) a[i] = i % 5 == 1 ? 0.0f : 0.01f * (i % 13) - 0.05f;
    std::vector<float> batched = random_floats(tokens * kN, 70 + tokens), single = batched;
    axpy_rows_tokens(type, weights_.data(), stride_, kRows, a.data(), tokens, batched.data(), kN,
                     kN);
    for (int r = 0; r < kRows; ++r) {
      for (int t = 0; t < tokens; ++t) {
        const float at = a[r * tokens + t];
        if (at != 0.0f) axpy_row(type, weights_.data() + r * stride_, at, single.data() + t * kN, kN);
      }
    }
    for (int64_t i = 0; i < tokens * kN; ++i) {
      ASSERT_EQ(batched[i], single[i])
          << tokens << " tokens, token " << i / kN << " element " << i % kN;
    }
  }
}

class QuantTargets : public ::testing::TestWithParam<int64_t> {};

TEST_P(QuantTargets, F16QuantizeRowMatchesReferenceBitForBit) {
  const ForcedTarget target(GetParam());
  // Ordinary values, values past the F16 range (infinity), subnormals and zeros, and a length
  // that leaves a tail after the vector loop.
  std::vector<float> x = random_floats(1001, 3, 4.0f);
  const std::vector<float> large = random_floats(100, 4, 1e5f), tiny = random_floats(100, 5, 1e-6f);
  x.insert(x.end(), large.begin(), large.end());
  x.insert(x.end(), tiny.begin(), tiny.end());
  x.insert(x.end(), {0.0f, -0.0f, 65504.0f, 65520.0f, 6.1e-5f, 5.96e-8f, 2.98e-8f});
  const int64_t n = std::ssize(x);
  std::vector<uint16_t> fast(n), reference(n);
  quantize_row(TensorType::F16, x.data(), fast.data(), n);
  quantize_row_reference(TensorType::F16, x.data(), reference.data(), n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(fast[i], reference[i]) << "x = " << x[i];
}

// ---- (c) round trip of the reference quantizer ----------------------------------------------

// Largest allowed error of one element, as a multiple of the largest |x| of its block (simple
// types) or sub-block (K-quants): half a quantization step, with slack for the fp16 rounding of
// the stored scales. The step is amax / 2^(bits - 1) for the symmetric types (the extreme value
// maps to -2^(bits-1) and the other side may clamp by one more step), (max - min) / (2^bits - 1)
// <= 2 amax / (2^bits - 1) for the types with a minimum; K-quants also round their sub-block
// scales and mins to 6 bits of the super-block's, up to 1/126 of the largest sub-block amax
// each, which the bound for random uniform data covers.
double max_error_per_amax(TensorType type) {
  switch (type) {
    case TensorType::F32: return 0;
    case TensorType::F16: return 1.0 / 2048;   // 11 significant bits
    case TensorType::BF16: return 1.0 / 256;   // 8 significant bits
    case TensorType::Q8_0: return 0.5 / 127 + 1.0 / 2048;
    case TensorType::Q4_0: return 1.0 / 8 + 1.0 / 2048;
    case TensorType::Q5_0: return 1.0 / 16 + 1.0 / 2048;
    case TensorType::Q4_1: return 1.0 / 15 + 2.0 / 1024;
    case TensorType::Q5_1: return 1.0 / 31 + 2.0 / 1024;
    case TensorType::Q4_K: return 1.0 / 15 + 4.0 / 126;
    case TensorType::Q5_K: return 1.0 / 31 + 4.0 / 126;
    case TensorType::Q6_K: return 1.0 / 32 + 2.0 / 126;
    default: return 0;
  }
}

class QuantRoundTrip : public ::testing::TestWithParam<TensorType> {};

TEST_P(QuantRoundTrip, ErrorWithinHalfAStep) {
  const TensorType type = GetParam();
  constexpr int64_t kN = 4096;
  // Mixed magnitudes: blocks of very different scale must each keep their own precision.
  std::vector<float> x = random_floats(kN, 3);
  for (int64_t i = 0; i < kN; ++i) x[i] *= std::ldexp(1.0f, static_cast<int>(i / 256 % 8) - 4);
  std::vector<uint8_t> stored(row_bytes(type, kN));
  quantize_row_reference(type, x.data(), stored.data(), kN);
  std::vector<float> y(kN);
  dequantize_row_reference(type, stored.data(), y.data(), kN);

  const TypeTraits& traits = type_traits(type);
  const int64_t group = traits.block_size == 256 ? (type == TensorType::Q6_K ? 16 : 32)
                                                 : std::max<int64_t>(traits.block_size, 1);
  for (int64_t g = 0; g < kN; g += group) {
    float amax = 0;
    for (int64_t i = g; i < g + group; ++i) amax = std::max(amax, std::abs(x[i]));
    if (traits.block_size == 256) {
      // The super-block's largest sub-block sets the scale resolution (see above).
      const int64_t super = g / 256 * 256;
      for (int64_t i = super; i < super + 256; ++i) amax = std::max(amax, std::abs(x[i]));
    }
    // F16 keeps only absolute precision below 2^-14 (subnormals, spaced 2^-24).
    const double floor = type == TensorType::F16 ? std::ldexp(1.0, -25) : 0.0;
    for (int64_t i = g; i < g + group; ++i) {
      ASSERT_LE(std::abs(y[i] - x[i]), max_error_per_amax(type) * amax + floor)
          << type_name(type) << " element " << i << ": " << x[i] << " came back as " << y[i];
    }
  }
  if (type == TensorType::F32) {
    EXPECT_EQ(y, x);
  }
}

std::string type_param_name(const ::testing::TestParamInfo<TensorType>& info) {
  return type_name(info.param);
}

std::string kernel_param_name(const ::testing::TestParamInfo<std::tuple<TensorType, int64_t>>& p) {
  return type_name(std::get<0>(p.param)) + "_" + hwy::TargetName(std::get<1>(p.param));
}

std::string target_name(const ::testing::TestParamInfo<int64_t>& info) {
  return hwy::TargetName(info.param);
}

INSTANTIATE_TEST_SUITE_P(
    AllTypesAllTargets, QuantKernels,
    ::testing::Combine(::testing::ValuesIn(kAllTypes), ::testing::ValuesIn(kernel_targets())),
    kernel_param_name);
INSTANTIATE_TEST_SUITE_P(AllTargets, QuantTargets, ::testing::ValuesIn(kernel_targets()),
                         target_name);
INSTANTIATE_TEST_SUITE_P(AllTypes, QuantRoundTrip, ::testing::ValuesIn(kAllTypes),
                         type_param_name);

}  // namespace
}  // namespace flashlm
