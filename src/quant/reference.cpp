#include "quant/reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "quant/blocks.h"
#include "quant/fp16.h"

namespace flashlm {
namespace {

[[noreturn]] void unsupported(TensorType type, const char* what) {
  fail("{} of tensor type {} is not supported yet; supported types: F32, F16, BF16, Q4_0, Q4_1, "
       "Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K",
       what, type_name(type));
}

int nearest(float x) { return static_cast<int>(std::lround(x)); }

void dequantize_q4_k(const BlockQ4_K& b, float* y) {
  const float d = fp16_to_float(b.d), dmin = fp16_to_float(b.dmin);
  const uint8_t* q = b.qs;
  for (int j = 0; j < kQKK; j += 64) {
    uint8_t s1, m1, s2, m2;
    k_scale_min(j / 32, b.scales, s1, m1);
    k_scale_min(j / 32 + 1, b.scales, s2, m2);
    for (int l = 0; l < 32; ++l) y[j + l] = d * s1 * (q[l] & 0xF) - dmin * m1;
    for (int l = 0; l < 32; ++l) y[j + 32 + l] = d * s2 * (q[l] >> 4) - dmin * m2;
    q += 32;
  }
}

void dequantize_q5_k(const BlockQ5_K& b, float* y) {
  const float d = fp16_to_float(b.d), dmin = fp16_to_float(b.dmin);
  const uint8_t* q = b.qs;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < kQKK; j += 64) {
    uint8_t s1, m1, s2, m2;
    k_scale_min(j / 32, b.scales, s1, m1);
    k_scale_min(j / 32 + 1, b.scales, s2, m2);
    for (int l = 0; l < 32; ++l) {
      y[j + l] = d * s1 * ((q[l] & 0xF) + (b.qh[l] & u1 ? 16 : 0)) - dmin * m1;
    }
    for (int l = 0; l < 32; ++l) {
      y[j + 32 + l] = d * s2 * ((q[l] >> 4) + (b.qh[l] & u2 ? 16 : 0)) - dmin * m2;
    }
    q += 32;
    u1 <<= 2;
    u2 <<= 2;
  }
}

void dequantize_q6_k(const BlockQ6_K& b, float* y) {
  const float d = fp16_to_float(b.d);
  const uint8_t* ql = b.ql;
  const uint8_t* qh = b.qh;
  const int8_t* sc = b.scales;
  for (int n = 0; n < kQKK; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[n + l] = d * sc[is] * q1;
      y[n + l + 32] = d * sc[is + 2] * q2;
      y[n + l + 64] = d * sc[is + 4] * q3;
      y[n + l + 96] = d * sc[is + 6] * q4;
    }
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

template <typename Block, typename Fn>
void for_blocks(const void* src, int64_t n, int block_size, float* dst, Fn decode) {
  const auto* blocks = static_cast<const Block*>(src);
  for (int64_t i = 0; i < n / block_size; ++i) decode(blocks[i], dst + i * block_size);
}

// Q4_K / Q5_K: each sub-block of 32 gets x ~ scale * q - min with q in [0, levels]; the 8
// scales and mins are then stored as 6-bit multiples of the super-block's d and dmin.
template <typename Block>
void quantize_k_asymmetric(const float* x, Block& b, int levels) {
  float scales[8], mins[8];
  for (int j = 0; j < 8; ++j) {
    const float* v = x + 32 * j;
    const float lo = std::min(0.0f, *std::min_element(v, v + 32));
    const float hi = *std::max_element(v, v + 32);
    scales[j] = (hi - lo) / levels;
    mins[j] = -lo;
  }
  const float max_scale = *std::max_element(scales, scales + 8);
  const float max_min = *std::max_element(mins, mins + 8);
  const float d = max_scale / 63, dmin = max_min / 63;
  b.d = float_to_fp16(d);
  b.dmin = float_to_fp16(dmin);
  const float dq = fp16_to_float(b.d), dminq = fp16_to_float(b.dmin);
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = static_cast<uint8_t>(std::clamp(dq > 0 ? nearest(scales[j] / dq) : 0, 0, 63));
    lm[j] = static_cast<uint8_t>(std::clamp(dminq > 0 ? nearest(mins[j] / dminq) : 0, 0, 63));
  }
  std::memset(b.scales, 0, sizeof(b.scales));
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      b.scales[j] = ls[j];
      b.scales[j + 4] = lm[j];
    } else {
      b.scales[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      b.scales[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      b.scales[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
  uint8_t q[kQKK];
  for (int j = 0; j < 8; ++j) {
    const float s = dq * ls[j], m = dminq * lm[j];
    for (int l = 0; l < 32; ++l) {
      q[32 * j + l] = static_cast<uint8_t>(
          std::clamp(s > 0 ? nearest((x[32 * j + l] + m) / s) : 0, 0, levels));
    }
  }
  if constexpr (std::is_same_v<Block, BlockQ5_K>) std::memset(b.qh, 0, sizeof(b.qh));
  for (int j = 0; j < kQKK; j += 64) {
    for (int l = 0; l < 32; ++l) {
      b.qs[j / 2 + l] = static_cast<uint8_t>((q[j + l] & 0xF) | ((q[j + 32 + l] & 0xF) << 4));
      if constexpr (std::is_same_v<Block, BlockQ5_K>) {
        const int pair = j / 64;
        if (q[j + l] & 16) b.qh[l] |= static_cast<uint8_t>(1 << (2 * pair));
        if (q[j + 32 + l] & 16) b.qh[l] |= static_cast<uint8_t>(2 << (2 * pair));
      }
    }
  }
}

void quantize_q6_k(const float* x, BlockQ6_K& b) {
  float scales[16];
  for (int j = 0; j < 16; ++j) {
    float amax = 0, max = 0;
    for (int l = 0; l < 16; ++l) {
      if (std::abs(x[16 * j + l]) > amax) {
        amax = std::abs(x[16 * j + l]);
        max = x[16 * j + l];
      }
    }
    scales[j] = max / -32;
  }
  float amax_scale = 0;
  for (float s : scales) amax_scale = std::max(amax_scale, std::abs(s));
  const float d = amax_scale / 127;
  b.d = float_to_fp16(d);
  const float dq = fp16_to_float(b.d);
  uint8_t q[kQKK];
  for (int j = 0; j < 16; ++j) {
    b.scales[j] = static_cast<int8_t>(std::clamp(dq > 0 ? nearest(scales[j] / dq) : 0, -128, 127));
    const float s = dq * b.scales[j];
    for (int l = 0; l < 16; ++l) {
      q[16 * j + l] =
          static_cast<uint8_t>(std::clamp(s != 0 ? nearest(x[16 * j + l] / s) : 0, -32, 31) + 32);
    }
  }
  std::memset(b.qh, 0, sizeof(b.qh));
  for (int n = 0; n < kQKK; n += 128) {
    uint8_t* ql = b.ql + n / 2;
    uint8_t* qh = b.qh + n / 4;
    for (int l = 0; l < 32; ++l) {
      const uint8_t q1 = q[n + l], q2 = q[n + l + 32], q3 = q[n + l + 64], q4 = q[n + l + 96];
      ql[l] = static_cast<uint8_t>((q1 & 0xF) | ((q3 & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((q2 & 0xF) | ((q4 & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) |
                                   ((q4 >> 4) << 6));
    }
  }
}

// Symmetric 32-element blocks: x = d * (q - offset), q in [0, 2 * offset).
template <typename Block>
void quantize_symmetric(const float* x, Block& b, int offset) {
  float amax = 0, max = 0;
  for (int j = 0; j < kQK; ++j) {
    if (std::abs(x[j]) > amax) {
      amax = std::abs(x[j]);
      max = x[j];
    }
  }
  const float d = max / -offset;
  b.d = float_to_fp16(d);
  const float id = d != 0 ? 1.0f / d : 0.0f;
  uint8_t q[kQK];
  for (int j = 0; j < kQK; ++j) {
    q[j] = static_cast<uint8_t>(std::clamp(nearest(x[j] * id) + offset, 0, 2 * offset - 1));
  }
  for (int j = 0; j < kQK / 2; ++j) b.qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
  if constexpr (std::is_same_v<Block, BlockQ5_0>) {
    uint32_t qh = 0;
    for (int j = 0; j < kQK; ++j) qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    std::memcpy(b.qh, &qh, 4);
  }
}

// Asymmetric 32-element blocks: x = d * q + m, q in [0, levels].
template <typename Block>
void quantize_asymmetric(const float* x, Block& b, int levels) {
  const float lo = *std::min_element(x, x + kQK), hi = *std::max_element(x, x + kQK);
  const float d = (hi - lo) / levels;
  b.d = float_to_fp16(d);
  b.m = float_to_fp16(lo);
  const float id = d != 0 ? 1.0f / d : 0.0f;
  uint8_t q[kQK];
  for (int j = 0; j < kQK; ++j) q[j] = static_cast<uint8_t>(std::clamp(nearest((x[j] - lo) * id), 0, levels));
  for (int j = 0; j < kQK / 2; ++j) b.qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
  if constexpr (std::is_same_v<Block, BlockQ5_1>) {
    uint32_t qh = 0;
    for (int j = 0; j < kQK; ++j) qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    std::memcpy(b.qh, &qh, 4);
  }
}

void check_row(TensorType type, int64_t n) { (void)row_bytes(type, n); }

}  // namespace

void dequantize_row_reference(TensorType type, const void* src, float* y, int64_t n) {
  check_row(type, n);
  switch (type) {
    case TensorType::F32: std::memcpy(y, src, n * sizeof(float)); return;
    case TensorType::F16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_float(h[i]);
      return;
    }
    case TensorType::BF16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_float(h[i]);
      return;
    }
    case TensorType::Q4_0:
      return for_blocks<BlockQ4_0>(src, n, kQK, y, [](const BlockQ4_0& b, float* o) {
        const float d = fp16_to_float(b.d);
        for (int j = 0; j < 16; ++j) {
          o[j] = ((b.qs[j] & 0xF) - 8) * d;
          o[j + 16] = ((b.qs[j] >> 4) - 8) * d;
        }
      });
    case TensorType::Q4_1:
      return for_blocks<BlockQ4_1>(src, n, kQK, y, [](const BlockQ4_1& b, float* o) {
        const float d = fp16_to_float(b.d), m = fp16_to_float(b.m);
        for (int j = 0; j < 16; ++j) {
          o[j] = (b.qs[j] & 0xF) * d + m;
          o[j + 16] = (b.qs[j] >> 4) * d + m;
        }
      });
    case TensorType::Q5_0:
      return for_blocks<BlockQ5_0>(src, n, kQK, y, [](const BlockQ5_0& b, float* o) {
        const float d = fp16_to_float(b.d);
        uint32_t qh;
        std::memcpy(&qh, b.qh, 4);
        for (int j = 0; j < 16; ++j) {
          const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
          o[j] = (((b.qs[j] & 0xF) | h0) - 16) * d;
          o[j + 16] = (((b.qs[j] >> 4) | h1) - 16) * d;
        }
      });
    case TensorType::Q5_1:
      return for_blocks<BlockQ5_1>(src, n, kQK, y, [](const BlockQ5_1& b, float* o) {
        const float d = fp16_to_float(b.d), m = fp16_to_float(b.m);
        uint32_t qh;
        std::memcpy(&qh, b.qh, 4);
        for (int j = 0; j < 16; ++j) {
          const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
          o[j] = ((b.qs[j] & 0xF) | h0) * d + m;
          o[j + 16] = ((b.qs[j] >> 4) | h1) * d + m;
        }
      });
    case TensorType::Q8_0:
      return for_blocks<BlockQ8_0>(src, n, kQK, y, [](const BlockQ8_0& b, float* o) {
        const float d = fp16_to_float(b.d);
        for (int j = 0; j < kQK; ++j) o[j] = b.qs[j] * d;
      });
    case TensorType::Q4_K: return for_blocks<BlockQ4_K>(src, n, kQKK, y, dequantize_q4_k);
    case TensorType::Q5_K: return for_blocks<BlockQ5_K>(src, n, kQKK, y, dequantize_q5_k);
    case TensorType::Q6_K: return for_blocks<BlockQ6_K>(src, n, kQKK, y, dequantize_q6_k);
    default: unsupported(type, "dequantization");
  }
}

float dot_reference(TensorType type, const void* row, const float* x, int64_t n) {
  std::vector<float> w(n);
  dequantize_row_reference(type, row, w.data(), n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += double{w[i]} * x[i];
  return static_cast<float>(sum);
}

void quantize_row_reference(TensorType type, const float* x, void* dst, int64_t n) {
  check_row(type, n);
  auto each = [&](auto* blocks, int block_size, auto encode) {
    for (int64_t i = 0; i < n / block_size; ++i) encode(x + i * block_size, blocks[i]);
  };
  switch (type) {
    case TensorType::F32: std::memcpy(dst, x, n * sizeof(float)); return;
    case TensorType::F16: {
      auto* h = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) h[i] = float_to_fp16(x[i]);
      return;
    }
    case TensorType::BF16: {
      auto* h = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) h[i] = float_to_bf16(x[i]);
      return;
    }
    case TensorType::Q4_0:
      return each(static_cast<BlockQ4_0*>(dst), kQK,
                  [](const float* v, BlockQ4_0& b) { quantize_symmetric(v, b, 8); });
    case TensorType::Q5_0:
      return each(static_cast<BlockQ5_0*>(dst), kQK,
                  [](const float* v, BlockQ5_0& b) { quantize_symmetric(v, b, 16); });
    case TensorType::Q4_1:
      return each(static_cast<BlockQ4_1*>(dst), kQK,
                  [](const float* v, BlockQ4_1& b) { quantize_asymmetric(v, b, 15); });
    case TensorType::Q5_1:
      return each(static_cast<BlockQ5_1*>(dst), kQK,
                  [](const float* v, BlockQ5_1& b) { quantize_asymmetric(v, b, 31); });
    case TensorType::Q8_0:
      return each(static_cast<BlockQ8_0*>(dst), kQK, [](const float* v, BlockQ8_0& b) {
        float amax = 0;
        for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::abs(v[j]));
        const float d = amax / 127;
        b.d = float_to_fp16(d);
        const float id = d != 0 ? 1.0f / d : 0.0f;
        for (int j = 0; j < kQK; ++j) b.qs[j] = static_cast<int8_t>(nearest(v[j] * id));
      });
    case TensorType::Q4_K:
      return each(static_cast<BlockQ4_K*>(dst), kQKK,
                  [](const float* v, BlockQ4_K& b) { quantize_k_asymmetric(v, b, 15); });
    case TensorType::Q5_K:
      return each(static_cast<BlockQ5_K*>(dst), kQKK,
                  [](const float* v, BlockQ5_K& b) { quantize_k_asymmetric(v, b, 31); });
    case TensorType::Q6_K:
      return each(static_cast<BlockQ6_K*>(dst), kQKK,
                  [](const float* v, BlockQ6_K& b) { quantize_q6_k(v, b); });
    default: unsupported(type, "quantization");
  }
}

}  // namespace flashlm
