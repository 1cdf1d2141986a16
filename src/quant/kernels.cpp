#include "quant/kernels.h"

#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "quant/blocks.h"
#include "quant/fp16.h"
#include "quant/reference.h"

namespace flashlm {
namespace hn = hwy::HWY_NAMESPACE;
namespace {

// Integer lanes: 16 x int16 where the target has 256-bit vectors (AVX2, AVX-512), 8 on
// 128-bit targets (SSE4, NEON); the loops below step by Lanes() so both work.
using D16 = hn::CappedTag<int16_t, 16>;
using D8 = hn::Rebind<int8_t, D16>;
using DU8 = hn::Rebind<uint8_t, D16>;
using D32 = hn::Repartition<int32_t, D16>;
using DF32 = hn::Rebind<float, D32>;
using VF32 = hn::Vec<DF32>;

// Integer dot of `count` int8 weights with the prepared int16 activations.
HWY_INLINE hn::Vec<D32> int_dot(const int8_t* w, const int16_t* x, int count) {
  const D16 d16;
  const D8 d8;
  const D32 d32;
  auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
  for (int i = 0; i < count; i += static_cast<int>(hn::Lanes(d16))) {
    const auto wv = hn::PromoteTo(d16, hn::LoadU(d8, w + i));
    sum0 = hn::ReorderWidenMulAccumulate(d32, wv, hn::LoadU(d16, x + i), sum0, sum1);
  }
  return hn::Add(sum0, sum1);
}

// acc += float(int sum) * scale
HWY_INLINE VF32 accumulate(VF32 acc, hn::Vec<D32> sum, float scale) {
  const DF32 df;
  return hn::MulAdd(hn::ConvertTo(df, sum), hn::Set(df, scale), acc);
}

// Splits 16 packed bytes into their low and high nibbles as int8, minus `offset`.
HWY_INLINE void split_nibbles(const uint8_t* packed, int8_t offset, int8_t* lo, int8_t* hi) {
  const hn::FixedTag<uint8_t, 16> du8;
  const hn::FixedTag<int8_t, 16> di8;
  const auto v = hn::LoadU(du8, packed);
  const auto off = hn::Set(di8, offset);
  hn::StoreU(hn::Sub(hn::BitCast(di8, hn::And(v, hn::Set(du8, 0x0F))), off), di8, lo);
  hn::StoreU(hn::Sub(hn::BitCast(di8, hn::ShiftRight<4>(v)), off), di8, hi);
}

// A 32-element block of the simple types: elements 0..15 in the low nibbles, 16..31 in the
// high ones.
HWY_INLINE void unpack_nibbles(const uint8_t* packed, int8_t offset, int8_t* out) {
  split_nibbles(packed, offset, out, out + 16);
}

float reduce(VF32 acc) { return hn::GetLane(hn::SumOfLanes(DF32(), acc)); }

float dot_q8_0(const void* row, const PreparedInput& x) {
  const auto* b = static_cast<const BlockQ8_0*>(row);
  VF32 acc = hn::Zero(DF32());
  for (int64_t i = 0; i < x.size() / kQK; ++i) {
    acc = accumulate(acc, int_dot(b[i].qs, x.q() + i * kQK, kQK),
                     fp16_to_float_fast(b[i].d) * x.scale()[i]);
  }
  return reduce(acc);
}

float dot_q4_0(const void* row, const PreparedInput& x) {
  const auto* b = static_cast<const BlockQ4_0*>(row);
  VF32 acc = hn::Zero(DF32());
  alignas(32) int8_t w[kQK];
  for (int64_t i = 0; i < x.size() / kQK; ++i) {
    unpack_nibbles(b[i].qs, 8, w);
    acc = accumulate(acc, int_dot(w, x.q() + i * kQK, kQK), fp16_to_float_fast(b[i].d) * x.scale()[i]);
  }
  return reduce(acc);
}

float dot_q4_1(const void* row, const PreparedInput& x) {
  const auto* b = static_cast<const BlockQ4_1*>(row);
  VF32 acc = hn::Zero(DF32());
  float mins = 0;
  alignas(32) int8_t w[kQK];
  for (int64_t i = 0; i < x.size() / kQK; ++i) {
    unpack_nibbles(b[i].qs, 0, w);
    acc = accumulate(acc, int_dot(w, x.q() + i * kQK, kQK), fp16_to_float_fast(b[i].d) * x.scale()[i]);
    // sum (q d + m) x = d sum q x + m sum x
    mins += fp16_to_float_fast(b[i].m) * x.scale()[i] * static_cast<float>(x.block_sum()[i]);
  }
  return reduce(acc) + mins;
}

// The 5th bits of Q5_0/Q5_1: bit j of qh sets bit 4 of element j.
HWY_INLINE void unpack_q5(const uint8_t* qs, const uint8_t* qh_bytes, int8_t offset, int8_t* w) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  unpack_nibbles(qs, 0, w);
  for (int j = 0; j < kQK; ++j) {
    w[j] = static_cast<int8_t>((w[j] | (((qh >> j) & 1) << 4)) - offset);
  }
}

float dot_q5_0(const void* row, const PreparedInput& x) {
  const auto* b = static_cast<const BlockQ5_0*>(row);
  VF32 acc = hn::Zero(DF32());
  alignas(32) int8_t w[kQK];
  for (int64_t i = 0; i < x.size() / kQK; ++i) {
    unpack_q5(b[i].qs, b[i].qh, 16, w);
    acc = accumulate(acc, int_dot(w, x.q() + i * kQK, kQK), fp16_to_float_fast(b[i].d) * x.scale()[i]);
  }
  return reduce(acc);
}

float dot_q5_1(const void* row, const PreparedInput& x) {
  const auto* b = static_cast<const BlockQ5_1*>(row);
  VF32 acc = hn::Zero(DF32());
  float mins = 0;
  alignas(32) int8_t w[kQK];
  for (int64_t i = 0; i < x.size() / kQK; ++i) {
    unpack_q5(b[i].qs, b[i].qh, 0, w);
    acc = accumulate(acc, int_dot(w, x.q() + i * kQK, kQK), fp16_to_float_fast(b[i].d) * x.scale()[i]);
    mins += fp16_to_float_fast(b[i].m) * x.scale()[i] * static_cast<float>(x.block_sum()[i]);
  }
  return reduce(acc) + mins;
}

// Q4_K and Q5_K: sub-block j of 32 contributes d*scale_j * dx * sum(q x) - dmin*min_j * dx * sum(x).
template <bool kFiveBits, typename Block>
float dot_k_asymmetric(const void* row, const PreparedInput& x) {
  const auto* blocks = static_cast<const Block*>(row);
  VF32 acc = hn::Zero(DF32());
  float mins = 0;
  alignas(32) int8_t w[kQK * 2];
  for (int64_t i = 0; i < x.size() / kQKK; ++i) {
    const Block& b = blocks[i];
    const float d = fp16_to_float_fast(b.d), dmin = fp16_to_float_fast(b.dmin);
    const int16_t* xq = x.q() + i * kQKK;
    const float* xs = x.scale() + i * (kQKK / kQK);
    const int32_t* xsum = x.block_sum() + i * (kQKK / kQK);
    for (int pair = 0; pair < 4; ++pair) {
      // A pair of sub-blocks shares 32 bytes: the first sub-block in the low nibbles.
      int8_t* lo = w;
      int8_t* hi = w + kQK;
      split_nibbles(b.qs + 32 * pair, 0, lo, hi);
      split_nibbles(b.qs + 32 * pair + 16, 0, lo + 16, hi + 16);
      if constexpr (kFiveBits) {
        const uint8_t u1 = static_cast<uint8_t>(1 << (2 * pair)), u2 = static_cast<uint8_t>(2 << (2 * pair));
        for (int l = 0; l < kQK; ++l) {
          lo[l] = static_cast<int8_t>(lo[l] | ((b.qh[l] & u1) ? 16 : 0));
          hi[l] = static_cast<int8_t>(hi[l] | ((b.qh[l] & u2) ? 16 : 0));
        }
      }
      for (int half = 0; half < 2; ++half) {
        const int j = 2 * pair + half;
        uint8_t scale, min;
        k_scale_min(j, b.scales, scale, min);
        acc = accumulate(acc, int_dot(half ? hi : lo, xq + kQK * j, kQK), d * scale * xs[j]);
        mins += dmin * min * xs[j] * static_cast<float>(xsum[j]);
      }
    }
  }
  return reduce(acc) - mins;
}

float dot_q6_k(const void* row, const PreparedInput& x) {
  const auto* blocks = static_cast<const BlockQ6_K*>(row);
  VF32 acc = hn::Zero(DF32());
  alignas(32) int8_t w[kQKK];
  const hn::FixedTag<uint8_t, 16> du8;
  const hn::FixedTag<int8_t, 16> di8;
  const auto low4 = hn::Set(du8, 0x0F), low2 = hn::Set(du8, 0x03);
  const auto off = hn::Set(di8, 32);
  for (int64_t i = 0; i < x.size() / kQKK; ++i) {
    const BlockQ6_K& b = blocks[i];
    // Rebuild the 256 6-bit values (minus 32) with vector byte operations.
    for (int n = 0; n < 2; ++n) {
      const uint8_t* ql = b.ql + 64 * n;
      const uint8_t* qh = b.qh + 32 * n;
      int8_t* out = w + 128 * n;
      for (int l = 0; l < 32; l += 16) {
        const auto l0 = hn::LoadU(du8, ql + l), l1 = hn::LoadU(du8, ql + l + 32);
        const auto h = hn::LoadU(du8, qh + l);
        const auto q1 = hn::Or(hn::And(l0, low4), hn::ShiftLeft<4>(hn::And(h, low2)));
        const auto q2 = hn::Or(hn::And(l1, low4), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<2>(h), low2)));
        const auto q3 = hn::Or(hn::ShiftRight<4>(l0), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<4>(h), low2)));
        const auto q4 = hn::Or(hn::ShiftRight<4>(l1), hn::ShiftLeft<4>(hn::ShiftRight<6>(h)));
        hn::StoreU(hn::Sub(hn::BitCast(di8, q1), off), di8, out + l);
        hn::StoreU(hn::Sub(hn::BitCast(di8, q2), off), di8, out + l + 32);
        hn::StoreU(hn::Sub(hn::BitCast(di8, q3), off), di8, out + l + 64);
        hn::StoreU(hn::Sub(hn::BitCast(di8, q4), off), di8, out + l + 96);
      }
    }
    const float d = fp16_to_float_fast(b.d);
    const int16_t* xq = x.q() + i * kQKK;
    const float* xs = x.scale() + i * (kQKK / kQK);
    for (int s = 0; s < 16; ++s) {
      acc = accumulate(acc, int_dot(w + 16 * s, xq + 16 * s, 16), d * b.scales[s] * xs[s / 2]);
    }
  }
  return reduce(acc);
}

float dot_float_row(TensorType type, const void* row, const PreparedInput& x) {
  if (type == TensorType::F32) return dot_f32(static_cast<const float*>(row), x.values(), x.size());
  // F16 / BF16: dequantize a slice at a time, then the float dot.
  constexpr int64_t kSlice = 256;
  float buffer[kSlice];
  float sum = 0;
  const auto* h = static_cast<const uint16_t*>(row);
  for (int64_t i = 0; i < x.size(); i += kSlice) {
    const int64_t n = std::min(kSlice, x.size() - i);
    for (int64_t j = 0; j < n; ++j) {
      buffer[j] = type == TensorType::F16 ? fp16_to_float_fast(h[i + j]) : bf16_to_float(h[i + j]);
    }
    sum += dot_f32(buffer, x.values() + i, n);
  }
  return sum;
}

bool is_float_type(TensorType t) {
  return t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16;
}

}  // namespace

void PreparedInput::prepare(TensorType weight_type, const float* x, int64_t n) {
  type_ = weight_type;
  n_ = n;
  if (is_float_type(weight_type)) {
    values_.assign(x, x + n);
    return;
  }
  if (n % kQK != 0) fail("cannot prepare an input of {} values: not a multiple of {}", n, kQK);
  q_.resize(n);
  scale_.resize(n / kQK);
  block_sum_.resize(n / kQK);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* v = x + b * kQK;
    float amax = 0;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::abs(v[j]));
    const float d = amax / 127.0f;
    const float id = d > 0 ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < kQK; ++j) {
      const auto q = static_cast<int16_t>(std::lround(v[j] * id));
      q_[b * kQK + j] = q;
      sum += q;
    }
    scale_[b] = d;
    block_sum_[b] = sum;
  }
}

float dot(TensorType type, const void* row, const PreparedInput& x) {
  if (type != x.weight_type()) {
    fail("internal error: input prepared for {} used with {} weights", type_name(x.weight_type()),
         type_name(type));
  }
  switch (type) {
    case TensorType::F32:
    case TensorType::F16:
    case TensorType::BF16: return dot_float_row(type, row, x);
    case TensorType::Q8_0: return dot_q8_0(row, x);
    case TensorType::Q4_0: return dot_q4_0(row, x);
    case TensorType::Q4_1: return dot_q4_1(row, x);
    case TensorType::Q5_0: return dot_q5_0(row, x);
    case TensorType::Q5_1: return dot_q5_1(row, x);
    case TensorType::Q4_K: return dot_k_asymmetric<false, BlockQ4_K>(row, x);
    case TensorType::Q5_K: return dot_k_asymmetric<true, BlockQ5_K>(row, x);
    case TensorType::Q6_K: return dot_q6_k(row, x);
    default: fail("dot products of type {} are not supported yet", type_name(type));
  }
}

void matvec_rows(TensorType type, const uint8_t* weights, size_t stride, const PreparedInput& x,
                 int64_t row_begin, int64_t row_end, float* y) {
  for (int64_t r = row_begin; r < row_end; ++r) y[r] = dot(type, weights + r * stride, x);
}

void matmul_rows(TensorType type, const uint8_t* weights, size_t stride, const PreparedInput* xs,
                 int64_t n_tokens, int64_t row_begin, int64_t row_end, float* y, int64_t ldy) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* row = weights + r * stride;
    for (int64_t t = 0; t < n_tokens; ++t) y[t * ldy + r] = dot(type, row, xs[t]);
  }
}

void dequantize_row(TensorType type, const void* src, float* dst, int64_t n) {
  dequantize_row_reference(type, src, dst, n);
}

namespace {

// y[0..32) += scale * q[0..32), the int8 values widened to float in vector lanes.
HWY_INLINE void axpy_int8_block(const int8_t* q, float scale, float* y) {
  const hn::FixedTag<float, 8> df;
  const hn::Rebind<int32_t, decltype(df)> di32;
  const hn::Rebind<int16_t, decltype(df)> di16;
  const hn::Rebind<int8_t, decltype(df)> di8;
  const auto vs = hn::Set(df, scale);
  for (int i = 0; i < kQK; i += 8) {
    const auto wide = hn::PromoteTo(di32, hn::PromoteTo(di16, hn::LoadU(di8, q + i)));
    hn::StoreU(hn::MulAdd(hn::ConvertTo(df, wide), vs, hn::LoadU(df, y + i)), df, y + i);
  }
}

}  // namespace

void axpy_row(TensorType type, const void* row, float a, float* y, int64_t n) {
  if (type == TensorType::F32) return axpy_f32(a, static_cast<const float*>(row), y, n);
  if (type == TensorType::Q8_0) {
    // The down projection of the bundles: the hot loop of the sparse FFN.
    const auto* b = static_cast<const BlockQ8_0*>(row);
    for (int64_t i = 0; i < n / kQK; ++i) axpy_int8_block(b[i].qs, a * fp16_to_float_fast(b[i].d), y + i * kQK);
    return;
  }
  const int64_t block = type_traits(type).block_size;
  const size_t block_bytes = type_traits(type).block_bytes;
  constexpr int64_t kSlice = 256;
  float buffer[kSlice];
  const int64_t slice = std::max(block, kSlice / block * block);
  for (int64_t i = 0; i < n; i += slice) {
    const int64_t m = std::min(slice, n - i);
    dequantize_row_reference(type, static_cast<const uint8_t*>(row) + i / block * block_bytes,
                             buffer, m);
    axpy_f32(a, buffer, y + i, m);
  }
}

float dot_f32(const float* a, const float* b, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  auto sum0 = hn::Zero(d), sum1 = hn::Zero(d);
  int64_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    sum0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), sum0);
    sum1 = hn::MulAdd(hn::LoadU(d, a + i + lanes), hn::LoadU(d, b + i + lanes), sum1);
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(sum0, sum1)));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto va = hn::Set(d, a);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    hn::StoreU(hn::MulAdd(va, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, y + i);
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

void scale_f32(float* x, float a, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto va = hn::Set(d, a);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), va), d, x + i);
  for (; i < n; ++i) x[i] *= a;
}

}  // namespace flashlm
