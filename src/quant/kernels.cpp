// Highway's dynamic dispatch: this file is compiled once for every target (foreach_target.h
// includes it again per target: scalar emulation, SSSE3, SSE4, AVX2, AVX-512, AVX-512 with
// VNNI on x86; NEON, SVE, SVE2, SVE_256 and SVE2_128 on ARM64), each copy in its own namespace
// flashlm::N_<TARGET>, and the functions of kernels.h pick the best one the CPU supports at
// their first call. SVE's vectors are sizeless: no arrays or struct members of vectors here,
// and no loop that assumes the vector length at compile time where only Lanes() knows it
// (kFixedLanes).
#include "quant/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "quant/blocks.h"
#include "quant/fp16.h"
#include "quant/reference.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "quant/kernels.cpp"
#include <hwy/foreach_target.h>  // must come before highway.h
#include <hwy/aligned_allocator.h>
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
#if HWY_TARGET == HWY_AVX3_DL && HWY_COMPILER_GCC
// Highway 1.0's AVX3_DL compiles for AVX-VNNI, not AVX-512 VNNI, although it runs only where
// the CPU has AVX-512 VNNI (its runtime check): allowed here for vpdpwssd (madd_accumulate).
#pragma GCC target("avx512vnni")
#endif
#if (HWY_TARGET == HWY_SVE_256 || HWY_TARGET == HWY_SVE2_128) && HWY_COMPILER_GCC_ACTUAL
// GCC 12.2 crashes (internal compiler error in tree_to_uhwi, during its loop distribution
// pass) on matmul_quantized<Q8_0> for the two SVE targets of fixed vector length; that pass
// is off for them (HWY_AFTER_NAMESPACE restores the options).
#pragma GCC optimize("no-tree-loop-distribution")
#endif
namespace flashlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// This target's versions of kernels.h's functions (dispatched to at the end of the file).
float dot_kernel(TensorType type, const void* row, const PreparedInput& x);
float dot_f32_kernel(const float* a, const float* b, int64_t n);
void axpy_f32_kernel(float a, const float* x, float* y, int64_t n);

namespace {

// A block's fp16 scale as float: one instruction where the target has one (F16C, part of x86's
// AVX2 and later; ARM64), the bit-level conversion elsewhere. Decided per target, not by the
// flags of the whole build as fp16.h's fp16_to_float_fast is (a portable build has no F16C
// outside this file): the K-quant and Q4_1 kernels convert one or two scales per 32 weights.
HWY_INLINE float half_to_float(uint16_t h) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  return _cvtsh_ss(h);
#elif HWY_ARCH_ARM_A64
  __fp16 v;
  std::memcpy(&v, &h, sizeof(v));
  return static_cast<float>(v);
#else
  return fp16_to_float(h);
#endif
}

// Integer lanes: 32 x int16 where the target has 512-bit vectors, 16 on 256-bit ones, 8 on
// 128-bit ones; every loop below steps by Lanes().
using D16 = hn::CappedTag<int16_t, 32>;
using D8 = hn::Rebind<int8_t, D16>;
using DU8 = hn::Rebind<uint8_t, D16>;
using D32 = hn::Repartition<int32_t, D16>;
using DF32 = hn::Rebind<float, D32>;
using V16 = hn::Vec<D16>;
using V32 = hn::Vec<D32>;
using VF32 = hn::Vec<DF32>;

// Lanes(D16()) where the compiler knows it, 0 where only the CPU does. SVE and SVE2 are
// sizeless: MaxLanes(D16()) is 32, an upper bound, and Lanes() is 8, 16 or 32 at run time
// (128-bit vectors and up: SVE's length is a multiple of 128 bits, Highway rounds it down to
// a power of two). Everywhere else, SVE_256 (16) and SVE2_128 (8) included, it is MaxLanes().
#if HWY_TARGET == HWY_SVE || HWY_TARGET == HWY_SVE2
constexpr size_t kFixedLanes = 0;
#else
constexpr size_t kFixedLanes = hn::MaxLanes(D16());
#endif

// sum + pairwise a*b, int16 -> int32. One VNNI instruction where the target has it.
HWY_INLINE V32 madd_accumulate(V16 a, V16 b, V32 sum) {
#if HWY_TARGET == HWY_AVX3_DL  // AVX-512 VNNI (Ice Lake and later; HWY_WANT_AVX3_DL)
  if constexpr (hn::MaxLanes(D16()) == 32) return V32{_mm512_dpwssd_epi32(sum.raw, a.raw, b.raw)};
#endif
  // Some targets (EMU128, and NEON and SVE) put part of the products into the second
  // accumulator; every caller sums all lanes in the end, so adding it back keeps the total.
  V32 rest = hn::Zero(D32());
  const V32 first = hn::ReorderWidenMulAccumulate(D32(), a, b, sum, rest);
  return hn::Add(first, rest);
}

float reduce(VF32 acc) { return hn::GetLane(hn::SumOfLanes(DF32(), acc)); }

// ---- Unpacking: every quantized type becomes groups of int16 values ------------------------
//
// A group is one block of the simple types (32 values) or one super-block of the K-quants
// (256). Value i of a group is d * w[i] + block_min[i / 32]: the K-quants' sub-block scales
// are folded into w (|w| <= 32 * 128, so products with int8 activations stay far inside
// int32); the minimums of the asymmetric types (Q4_1, Q5_1, Q4_K, Q5_K) stay apart, one float
// per 32 values, because sum_i min * x_i = min * sum_i x_i is one multiply per block.
// Every store below is as wide as the loads that read it back, so no store-forwarding stall.

constexpr bool is_asymmetric(TensorType t) {
  return t == TensorType::Q4_1 || t == TensorType::Q5_1 || t == TensorType::Q4_K ||
         t == TensorType::Q5_K;
}

using DU8x16 = hn::FixedTag<uint8_t, 16>;
using VU8x16 = hn::Vec<DU8x16>;

// w[0..16) = lo - offset, w[16..32) = hi - offset, 16 bytes each widened to int16. A template
// on the target's width so that the wide branch's 256-bit tags exist only where they can.
template <size_t kLanes = kFixedLanes>
HWY_INLINE void store_block(VU8x16 lo, VU8x16 hi, int16_t offset, int16_t* w) {
  if constexpr (kLanes >= 16) {
    constexpr size_t kHalf = kLanes >= 16 ? 16 : 1;
    const hn::FixedTag<uint16_t, kHalf> du16;
    const hn::FixedTag<int16_t, kHalf> di16;
    const auto a = hn::Sub(hn::BitCast(di16, hn::PromoteTo(du16, lo)), hn::Set(di16, offset));
    const auto b = hn::Sub(hn::BitCast(di16, hn::PromoteTo(du16, hi)), hn::Set(di16, offset));
    if constexpr (kLanes == 32) {
      hn::Store(hn::Combine(D16(), b, a), D16(), w);
    } else {
      hn::Store(a, di16, w);
      hn::Store(b, di16, w + 16);
    }
  } else {
    // 128-bit targets (8 lanes), and SVE and SVE2 at any vector length (kLanes 0: Lanes() is
    // 8, 16 or 32 at run time): Lanes() at a time through a byte buffer.
    alignas(16) uint8_t bytes[32];
    hn::Store(lo, DU8x16(), bytes);
    hn::Store(hi, DU8x16(), bytes + 16);
    const D16 di16;
    const DU8 du8;
    const hn::Rebind<uint16_t, DU8> du16;
    for (int i = 0; i < kQK; i += static_cast<int>(hn::Lanes(di16))) {
      hn::Store(hn::Sub(hn::BitCast(di16, hn::PromoteTo(du16, hn::LoadU(du8, bytes + i))),
                        hn::Set(di16, offset)),
                di16, w + i);
    }
  }
}

// The 5th bits of Q5_0/Q5_1 (bit j of the 32-bit qh for value j) as 0/16 per byte, for values
// 0..15 (lo) and 16..31 (hi).
HWY_INLINE void fifth_bits(const uint8_t* qh, VU8x16& lo, VU8x16& hi) {
  alignas(16) static constexpr uint8_t kLoByte[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  alignas(16) static constexpr uint8_t kHiByte[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
  alignas(16) static constexpr uint8_t kBit[16] = {1, 2, 4, 8, 16, 32, 64, 128,
                                                   1, 2, 4, 8, 16, 32, 64, 128};
  const DU8x16 d;
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  const auto all = hn::BitCast(d, hn::Set(hn::FixedTag<uint32_t, 4>(), bits));
  const auto bit = hn::Load(d, kBit);
  const auto sixteen = hn::Set(d, 16);
  lo = hn::IfThenElseZero(hn::TestBit(hn::TableLookupBytes(all, hn::Load(d, kLoByte)), bit), sixteen);
  hi = hn::IfThenElseZero(hn::TestBit(hn::TableLookupBytes(all, hn::Load(d, kHiByte)), bit), sixteen);
}

// A block of the simple 4/5-bit types: values 0..15 in the low nibbles, 16..31 in the high ones.
template <bool kFiveBits>
HWY_INLINE void unpack_nibbles(const uint8_t* qs, const uint8_t* qh, int16_t offset, int16_t* w) {
  const DU8x16 d;
  const auto v = hn::LoadU(d, qs);
  auto lo = hn::And(v, hn::Set(d, 0x0F));
  auto hi = hn::ShiftRight<4>(v);
  if constexpr (kFiveBits) {
    VU8x16 lo5, hi5;
    fifth_bits(qh, lo5, hi5);
    lo = hn::Or(lo, lo5);
    hi = hn::Or(hi, hi5);
  }
  store_block(lo, hi, offset, w);
}

template <bool kFiveBits, typename Block>
HWY_INLINE float unpack_k_asymmetric(const Block& b, int16_t* w, float* block_min) {
  const D16 d16;
  const DU8 du8;
  const hn::Rebind<uint16_t, DU8> du16;
  const int lanes = static_cast<int>(hn::Lanes(du8));
  const float dmin = half_to_float(b.dmin);
  for (int pair = 0; pair < 4; ++pair) {
    uint8_t scale_lo, min_lo, scale_hi, min_hi;
    k_scale_min(2 * pair, b.scales, scale_lo, min_lo);
    k_scale_min(2 * pair + 1, b.scales, scale_hi, min_hi);
    block_min[2 * pair] = -dmin * min_lo;
    block_min[2 * pair + 1] = -dmin * min_hi;
    // A pair of sub-blocks shares 32 bytes: the first sub-block in the low nibbles.
    for (int i = 0; i < kQK; i += lanes) {
      const auto bytes = hn::LoadU(du8, b.qs + 32 * pair + i);
      auto lo = hn::And(bytes, hn::Set(du8, 0x0F));
      auto hi = hn::ShiftRight<4>(bytes);
      if constexpr (kFiveBits) {
        const auto h = hn::LoadU(du8, b.qh + i);
        const auto sixteen = hn::Set(du8, 16);
        lo = hn::Or(lo, hn::IfThenElseZero(hn::TestBit(h, hn::Set(du8, uint8_t(1 << (2 * pair)))), sixteen));
        hi = hn::Or(hi, hn::IfThenElseZero(hn::TestBit(h, hn::Set(du8, uint8_t(2 << (2 * pair)))), sixteen));
      }
      hn::Store(hn::Mul(hn::BitCast(d16, hn::PromoteTo(du16, lo)), hn::Set(d16, scale_lo)), d16,
                w + 64 * pair + i);
      hn::Store(hn::Mul(hn::BitCast(d16, hn::PromoteTo(du16, hi)), hn::Set(d16, scale_hi)), d16,
                w + 64 * pair + 32 + i);
    }
  }
  return half_to_float(b.d);
}

// Q6_K: the 6-bit values q of quarter k of a half super-block (values 32k + l .. 32k + l +
// lanes) minus 32, times the scales of their 16-value sub-blocks (2k + l / 16, and the next
// one where lanes is 32), into out.
HWY_INLINE void store_q6_quarter(int k, int l, int lanes, const int8_t* sc, int16_t* out,
                                 hn::Vec<DU8> q) {
  const D16 d16;
  const hn::Rebind<uint16_t, DU8> du16;
  const int s = 2 * k + l / 16;
  hn::Vec<D16> scale;
  if constexpr (kFixedLanes == 32) {
    const hn::Half<D16> dh;
    scale = hn::Combine(d16, hn::Set(dh, sc[s + 1]), hn::Set(dh, sc[s]));
  } else if constexpr (kFixedLanes == 0) {
    // 32 lanes (vectors of 512 bits and up): two sub-blocks, the second's scale read only then
    // (at l = 16, s + 1 would be past the last one).
    scale = lanes > 16 ? hn::IfThenElse(hn::FirstN(d16, 16), hn::Set(d16, sc[s]),
                                        hn::Set(d16, sc[s + 1]))
                       : hn::Set(d16, sc[s]);
  } else {
    (void)lanes;
    scale = hn::Set(d16, sc[s]);
  }
  const auto v = hn::Sub(hn::BitCast(d16, hn::PromoteTo(du16, q)), hn::Set(d16, 32));
  hn::Store(hn::Mul(v, scale), d16, out + 32 * k + l);
}

HWY_INLINE float unpack_q6_k(const BlockQ6_K& b, int16_t* w) {
  // 6-bit values from 4 low bits (ql) and 2 high ones (qh), Lanes() at a time, minus 32,
  // times the scale of their 16-value sub-block.
  const D16 d16;
  const DU8 du8;
  // 8, 16 or 32; known only at run time on SVE and SVE2 (kFixedLanes 0).
  const int lanes = static_cast<int>(kFixedLanes != 0 ? kFixedLanes : hn::Lanes(d16));
  const auto low4 = hn::Set(du8, 0x0F), low2 = hn::Set(du8, 0x03);
  for (int n = 0; n < 2; ++n) {
    const uint8_t* ql = b.ql + 64 * n;
    const uint8_t* qh = b.qh + 32 * n;
    const int8_t* sc = b.scales + 8 * n;
    int16_t* out = w + 128 * n;
    for (int l = 0; l < 32; l += lanes) {
      const auto l0 = hn::LoadU(du8, ql + l), l1 = hn::LoadU(du8, ql + l + 32);
      const auto h = hn::LoadU(du8, qh + l);
      store_q6_quarter(0, l, lanes, sc, out,
                       hn::Or(hn::And(l0, low4), hn::ShiftLeft<4>(hn::And(h, low2))));
      store_q6_quarter(1, l, lanes, sc, out,
                       hn::Or(hn::And(l1, low4), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<2>(h), low2))));
      store_q6_quarter(2, l, lanes, sc, out,
                       hn::Or(hn::ShiftRight<4>(l0), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<4>(h), low2))));
      store_q6_quarter(3, l, lanes, sc, out,
                       hn::Or(hn::ShiftRight<4>(l1), hn::ShiftLeft<4>(hn::ShiftRight<6>(h))));
    }
  }
  return half_to_float(b.d);
}

// Group `index` of a row of type T: values into w, minimums into block_min (asymmetric types
// only); returns the group's scale d.
template <TensorType T>
HWY_INLINE float unpack_group(const uint8_t* row, int64_t index, int16_t* w, float* block_min) {
  if constexpr (T == TensorType::Q8_0) {
    const auto& b = reinterpret_cast<const BlockQ8_0*>(row)[index];
    const D16 d16;
    const D8 d8;
    for (int i = 0; i < kQK; i += static_cast<int>(hn::Lanes(d16))) {
      hn::Store(hn::PromoteTo(d16, hn::LoadU(d8, b.qs + i)), d16, w + i);
    }
    return half_to_float(b.d);
  } else if constexpr (T == TensorType::Q4_0) {
    const auto& b = reinterpret_cast<const BlockQ4_0*>(row)[index];
    unpack_nibbles<false>(b.qs, nullptr, 8, w);
    return half_to_float(b.d);
  } else if constexpr (T == TensorType::Q4_1) {
    const auto& b = reinterpret_cast<const BlockQ4_1*>(row)[index];
    unpack_nibbles<false>(b.qs, nullptr, 0, w);
    block_min[0] = half_to_float(b.m);
    return half_to_float(b.d);
  } else if constexpr (T == TensorType::Q5_0) {
    const auto& b = reinterpret_cast<const BlockQ5_0*>(row)[index];
    unpack_nibbles<true>(b.qs, b.qh, 16, w);
    return half_to_float(b.d);
  } else if constexpr (T == TensorType::Q5_1) {
    const auto& b = reinterpret_cast<const BlockQ5_1*>(row)[index];
    unpack_nibbles<true>(b.qs, b.qh, 0, w);
    block_min[0] = half_to_float(b.m);
    return half_to_float(b.d);
  } else if constexpr (T == TensorType::Q4_K) {
    return unpack_k_asymmetric<false>(reinterpret_cast<const BlockQ4_K*>(row)[index], w, block_min);
  } else if constexpr (T == TensorType::Q5_K) {
    return unpack_k_asymmetric<true>(reinterpret_cast<const BlockQ5_K*>(row)[index], w, block_min);
  } else {
    static_assert(T == TensorType::Q6_K);
    return unpack_q6_k(reinterpret_cast<const BlockQ6_K*>(row)[index], w);
  }
}

template <TensorType T>
constexpr int64_t kGroup = (T == TensorType::Q4_K || T == TensorType::Q5_K || T == TensorType::Q6_K) ? kQKK : kQK;

// ---- Integer dot products of unpacked groups with prepared inputs --------------------------

// The exact integer dot of `count` unpacked values with the quantized input.
HWY_INLINE V32 group_int_dot(const int16_t* w, const int16_t* x, int64_t count) {
  const D16 d16;
  V32 sum = hn::Zero(D32());
  for (int64_t i = 0; i < count; i += static_cast<int64_t>(hn::Lanes(d16))) {
    sum = madd_accumulate(hn::Load(d16, w + i), hn::LoadU(d16, x + i), sum);
  }
  return sum;
}

// acc += d * dx * sum(w x): the integer sum scaled by the group's weight and input scales.
HWY_INLINE VF32 scale_accumulate(V32 sum, float d_times_dx, VF32 acc) {
  return hn::MulAdd(hn::ConvertTo(DF32(), sum), hn::Set(DF32(), d_times_dx), acc);
}

// The minimums' part of group g of one row with one input, added to the running sums: the
// K-quants' eight block minimums in 8-lane multiply-adds (macc), the simple asymmetric types'
// one (mins). dot_quantized and tile_dot both sum through these two helpers, in one order.
template <TensorType T, class DF8>
HWY_INLINE void add_group_mins(DF8 df8, const float* block_min, const float* block_sums,
                               int64_t g, hn::Vec<DF8>& macc, float& mins) {
  if constexpr (is_asymmetric(T) && kGroup<T> == kQKK) {
    for (int64_t b = 0; b < 8; b += static_cast<int64_t>(hn::Lanes(df8))) {
      macc = hn::MulAdd(hn::LoadU(df8, block_min + b), hn::LoadU(df8, block_sums + g * 8 + b),
                        macc);
    }
  } else if constexpr (is_asymmetric(T)) {
    mins += block_min[0] * block_sums[g];
  }
}

template <TensorType T, class DF8>
HWY_INLINE float finish_dot(DF8 df8, VF32 acc, float mins, hn::Vec<DF8> macc) {
  float v = reduce(acc) + mins;
  if constexpr (is_asymmetric(T) && kGroup<T> == kQKK) v += hn::GetLane(hn::SumOfLanes(df8, macc));
  return v;
}

// One row's dot with one prepared input, group after group. tile_dot (prefill) keeps the same
// order of every float operation, so a token's result does not depend on whether it came alone
// or in a batch: the activations are quantized again at every layer, where a one-ulp
// difference can move a value to the next int8 step, and a batched pass would drift from
// token-by-token decoding (0.35% of perplexity on SmolLM2 before the two agreed).
template <TensorType T>
float dot_quantized(const uint8_t* row, const PreparedInput& x) {
  constexpr int64_t kCount = kGroup<T>;
  const int64_t groups = x.size() / kCount;
  const hn::CappedTag<float, 8> df8;
  alignas(64) int16_t w[kCount];
  float block_min[kCount / kQK];
  VF32 acc = hn::Zero(DF32());
  hn::Vec<decltype(df8)> macc = hn::Zero(df8);
  float mins = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const float d = unpack_group<T>(row, g, w, block_min);
    acc = scale_accumulate(group_int_dot(w, x.q() + g * kCount, kCount), d * x.scale()[g], acc);
    add_group_mins<T>(df8, block_min, x.scaled_block_sum(), g, macc, mins);
  }
  return finish_dot<T>(df8, acc, mins, macc);
}

// Prefill: rows are unpacked once per call and multiplied with kTile tokens at a time, so each
// loaded weight vector serves several tokens and the tokens' accumulators are independent.
constexpr int64_t kTile = 4;
constexpr int64_t kRowBlock = 4;

// The micro-kernel: kRows unpacked rows times kTokens tokens, all groups. Each step loads
// kRows weight vectors and kTokens input vectors for kRows * kTokens multiply-adds.
// kRowBlock rows unpacked for prefill, row after row: values, group scales, block minimums.
struct UnpackedRows {
  const int16_t* values;
  const float* scales;
  const float* mins;
  int64_t n, groups, blocks;  // per row
};

// The tile's accumulators are named variables, one per row r and token t (acc<r><t>, ...), not
// arrays: SVE's vectors are sizeless and cannot be array elements. FLASHLM_TILE(X) expands
// X(r, t) for the 4 x 4 pairs; each use is guarded by `if constexpr (r < kRows && t < kTokens)`
// and the compiler drops the pairs outside the tile.
#define FLASHLM_TILE_ROW(X, r) X(r, 0) X(r, 1) X(r, 2) X(r, 3)
#define FLASHLM_TILE(X) FLASHLM_TILE_ROW(X, 0) FLASHLM_TILE_ROW(X, 1) FLASHLM_TILE_ROW(X, 2) FLASHLM_TILE_ROW(X, 3)
constexpr int kMaxTileRows = 4;
constexpr int kMaxTileTokens = 4;

// Rows first..first+kRows of `rows` times tokens xs[0..kTokens); out[t * ldy + r] gets row
// first + r, token t.
template <TensorType T, int kRows, int kTokens = kTile>
HWY_INLINE void tile_dot(const UnpackedRows& rows, int64_t first, const PreparedInput* xs,
                         float* out, int64_t ldy) {
  static_assert(kRows >= 1 && kRows <= kMaxTileRows && kTokens >= 1 && kTokens <= kMaxTileTokens,
                "FLASHLM_TILE names 4 x 4 accumulators");
  static_assert(kTile <= kMaxTileTokens);
  constexpr int64_t kCount = kGroup<T>;
  const int64_t groups = rows.groups;
  const int16_t* w[kMaxTileRows] = {};
  const float* d[kMaxTileRows] = {};
  const float* bm[kMaxTileRows] = {};
  for (int r = 0; r < kRows; ++r) {
    w[r] = rows.values + (first + r) * rows.n;
    d[r] = rows.scales + (first + r) * rows.groups;
    bm[r] = rows.mins + (first + r) * rows.blocks;
  }
  const D16 d16;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d16));
  const hn::CappedTag<float, 8> df8;
  using VF8 = hn::Vec<decltype(df8)>;
#define FLASHLM_TILE_INIT(r, t)                          \
  [[maybe_unused]] VF32 acc##r##t = hn::Zero(DF32()); \
  [[maybe_unused]] VF8 macc##r##t = hn::Zero(df8);    \
  [[maybe_unused]] float facc##r##t = 0;
  FLASHLM_TILE(FLASHLM_TILE_INIT)
#undef FLASHLM_TILE_INIT
  for (int64_t g = 0; g < groups; ++g) {
#define FLASHLM_TILE_SUM(r, t) [[maybe_unused]] V32 sum##r##t = hn::Zero(D32());
    FLASHLM_TILE(FLASHLM_TILE_SUM)
#undef FLASHLM_TILE_SUM
#pragma GCC unroll 8
    for (int64_t i = g * kCount; i < (g + 1) * kCount; i += lanes) {
      // The rows' weight vectors, then token after token its input vector times each of them.
#define FLASHLM_TILE_WEIGHTS(r) \
  [[maybe_unused]] const V16 wv##r = r < kRows ? hn::Load(d16, w[r] + i) : hn::Zero(d16);
      FLASHLM_TILE_WEIGHTS(0) FLASHLM_TILE_WEIGHTS(1) FLASHLM_TILE_WEIGHTS(2) FLASHLM_TILE_WEIGHTS(3)
#undef FLASHLM_TILE_WEIGHTS
#define FLASHLM_TILE_MADD(r, t) \
  if constexpr (r < kRows) sum##r##t = madd_accumulate(wv##r, xv, sum##r##t);
#define FLASHLM_TILE_TOKEN(t)                                                 \
  if constexpr (t < kTokens) {                                                \
    const V16 xv = hn::LoadU(d16, xs[t].q() + i);                             \
    FLASHLM_TILE_MADD(0, t) FLASHLM_TILE_MADD(1, t) FLASHLM_TILE_MADD(2, t) \
    FLASHLM_TILE_MADD(3, t)                                                   \
  }
      FLASHLM_TILE_TOKEN(0) FLASHLM_TILE_TOKEN(1) FLASHLM_TILE_TOKEN(2) FLASHLM_TILE_TOKEN(3)
#undef FLASHLM_TILE_TOKEN
#undef FLASHLM_TILE_MADD
    }
#define FLASHLM_TILE_SCALE(r, t)                                                          \
  if constexpr (r < kRows && t < kTokens) {                                               \
    acc##r##t = scale_accumulate(sum##r##t, d[r][g] * xs[t].scale()[g], acc##r##t); \
  }
    FLASHLM_TILE(FLASHLM_TILE_SCALE)
#undef FLASHLM_TILE_SCALE
    if constexpr (is_asymmetric(T)) {
#define FLASHLM_TILE_MINS(r, t)                                                          \
  if constexpr (r < kRows && t < kTokens) {                                              \
    add_group_mins<T>(df8, bm[r] + g * (kCount / kQK), xs[t].scaled_block_sum(), g, \
                      macc##r##t, facc##r##t);                                           \
  }
      FLASHLM_TILE(FLASHLM_TILE_MINS)
#undef FLASHLM_TILE_MINS
    }
  }
#define FLASHLM_TILE_FINISH(r, t)                                                 \
  if constexpr (r < kRows && t < kTokens) {                                       \
    out[t * ldy + r] = finish_dot<T>(df8, acc##r##t, facc##r##t, macc##r##t); \
  }
  FLASHLM_TILE(FLASHLM_TILE_FINISH)
#undef FLASHLM_TILE_FINISH
}
#undef FLASHLM_TILE
#undef FLASHLM_TILE_ROW

template <TensorType T>
void matmul_quantized(const uint8_t* weights, size_t stride, const PreparedInput* xs,
                      int64_t n_tokens, int64_t row_begin, int64_t row_end, float* y,
                      int64_t ldy) {
  constexpr int64_t kCount = kGroup<T>;
  const int64_t n = xs[0].size();
  const int64_t groups = n / kCount;
  const int64_t blocks = n / kQK;
  // kRowBlock unpacked rows: values, group scales, block minimums.
  thread_local hwy::AlignedFreeUniquePtr<int16_t[]> values;
  thread_local int64_t values_size = 0;
  thread_local std::vector<float> scales, block_mins;
  if (values_size < kRowBlock * n) {
    values = hwy::AllocateAligned<int16_t>(static_cast<size_t>(kRowBlock * n));
    values_size = kRowBlock * n;
  }
  if (static_cast<int64_t>(scales.size()) < kRowBlock * groups) scales.resize(kRowBlock * groups);
  if (static_cast<int64_t>(block_mins.size()) < kRowBlock * blocks) block_mins.resize(kRowBlock * blocks);
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, row_end - r0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        scales[r * groups + g] = unpack_group<T>(weights + (r0 + r) * stride, g,
                                                 values.get() + r * n + g * kCount,
                                                 block_mins.data() + r * blocks + g * (kCount / kQK));
      }
    }
    const UnpackedRows unpacked{values.get(), scales.data(), block_mins.data(), n, groups, blocks};
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kTile) {
      float* out = y + t0 * ldy + r0;
      // The last tokens of the batch, fewer than a tile, in a narrower tile (K-quants: every
      // (row, token) sum has accumulators of its own, and the tests check the bits).
      const auto tiles = [&](auto k_tokens) {
        constexpr int kT = decltype(k_tokens)::value;
        int64_t r = 0;
        // Four rows per pass where a group is long (K-quants): more reuse of each input
        // vector. The simple types' one-step groups spend their time on the per-group float
        // work, for which sixteen accumulators no longer fit the registers.
        for (; kCount == kQKK && r + 4 <= rows; r += 4) tile_dot<T, 4, kT>(unpacked, r, xs + t0, out + r, ldy);
        for (; r + 2 <= rows; r += 2) tile_dot<T, 2, kT>(unpacked, r, xs + t0, out + r, ldy);
        for (; r < rows; ++r) tile_dot<T, 1, kT>(unpacked, r, xs + t0, out + r, ldy);
      };
      static_assert(kTile == 4, "the cases below name every narrower tile");
      if (kCount != kQKK && n_tokens - t0 < kTile) {
        // The simple types: one row and one token at a time (their asymmetric minimums,
        // summed in scalars, round otherwise in a narrower tile's code).
        for (int64_t t = 0; t < n_tokens - t0; ++t) {
          for (int64_t r = 0; r < rows; ++r) tile_dot<T, 1, 1>(unpacked, r, xs + t0 + t, out + t * ldy + r, ldy);
        }
        continue;
      }
      switch (std::min(kTile, n_tokens - t0)) {
        case 1: tiles(std::integral_constant<int, 1>()); break;
        case 2: tiles(std::integral_constant<int, 2>()); break;
        case 3: tiles(std::integral_constant<int, 3>()); break;
        default: tiles(std::integral_constant<int, 4>()); break;
      }
    }
  }
}

// F16 rows, widened to float in vector lanes (one instruction per vector with F16C): the KV
// cache's keys and the compact predictors' rows.
float dot_f16(const uint16_t* row, const float* x, int64_t n) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<hwy::float16_t, decltype(d)> dh;
  const auto* h = reinterpret_cast<const hwy::float16_t*>(row);
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  auto sum0 = hn::Zero(d), sum1 = hn::Zero(d);
  int64_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    sum0 = hn::MulAdd(hn::PromoteTo(d, hn::LoadU(dh, h + i)), hn::LoadU(d, x + i), sum0);
    sum1 = hn::MulAdd(hn::PromoteTo(d, hn::LoadU(dh, h + i + lanes)), hn::LoadU(d, x + i + lanes),
                      sum1);
  }
  for (; i + lanes <= n; i += lanes) {
    sum0 = hn::MulAdd(hn::PromoteTo(d, hn::LoadU(dh, h + i)), hn::LoadU(d, x + i), sum0);
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(sum0, sum1)));
  for (; i < n; ++i) sum += half_to_float(row[i]) * x[i];
  return sum;
}

void axpy_f16(float a, const uint16_t* row, float* y, int64_t n) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<hwy::float16_t, decltype(d)> dh;
  const auto* h = reinterpret_cast<const hwy::float16_t*>(row);
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto va = hn::Set(d, a);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    hn::StoreU(hn::MulAdd(va, hn::PromoteTo(d, hn::LoadU(dh, h + i)), hn::LoadU(d, y + i)), d,
               y + i);
  }
  for (; i < n; ++i) y[i] += a * half_to_float(row[i]);
}

float dot_float_row(TensorType type, const void* row, const PreparedInput& x) {
  if (type == TensorType::F32) return dot_f32_kernel(static_cast<const float*>(row), x.values(), x.size());
  if (type == TensorType::F16) {
    return dot_f16(static_cast<const uint16_t*>(row), x.values(), x.size());
  }
  // BF16: dequantize a slice at a time, then the float dot.
  constexpr int64_t kSlice = 256;
  float buffer[kSlice];
  float sum = 0;
  const auto* h = static_cast<const uint16_t*>(row);
  for (int64_t i = 0; i < x.size(); i += kSlice) {
    const int64_t n = std::min(kSlice, x.size() - i);
    for (int64_t j = 0; j < n; ++j) buffer[j] = bf16_to_float(h[i + j]);
    sum += dot_f32_kernel(buffer, x.values() + i, n);
  }
  return sum;
}

bool is_float_type(TensorType t) {
  return t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16;
}

}  // namespace

// The activations as int8 values in int16 lanes, one scale per group.
void quantize_input_kernel(const float* x, int64_t n, int64_t group, int16_t* q_out,
                           float* scale) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<int16_t, decltype(df)> di16;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t b = 0; b < n / group; ++b) {
    const float* v = x + b * group;
    int64_t j = 0;
    auto vmax = hn::Zero(df);
    for (; j + lanes <= group; j += lanes) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, v + j)));
    float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
    for (; j < group; ++j) amax = std::max(amax, std::abs(v[j]));
    const float d = amax / 127.0f;
    const float id = d > 0 ? 1.0f / d : 0.0f;
    // Round to nearest, ties to even, as llama.cpp quantizes its activations.
    int16_t* q = q_out + b * group;
    const auto vid = hn::Set(df, id);
    for (j = 0; j + lanes <= group; j += lanes) {
      hn::StoreU(hn::DemoteTo(di16, hn::NearestInt(hn::Mul(hn::LoadU(df, v + j), vid))), di16, q + j);
    }
    for (; j < group; ++j) q[j] = static_cast<int16_t>(std::nearbyint(v[j] * id));
    scale[b] = d;
  }
}

float dot_kernel(TensorType type, const void* row, const PreparedInput& x) {
  if (type != x.weight_type()) {
    fail("internal error: input prepared for {} used with {} weights", type_name(x.weight_type()),
         type_name(type));
  }
  const auto* bytes = static_cast<const uint8_t*>(row);
  switch (type) {
    case TensorType::F32:
    case TensorType::F16:
    case TensorType::BF16: return dot_float_row(type, row, x);
    case TensorType::Q8_0: return dot_quantized<TensorType::Q8_0>(bytes, x);
    case TensorType::Q4_0: return dot_quantized<TensorType::Q4_0>(bytes, x);
    case TensorType::Q4_1: return dot_quantized<TensorType::Q4_1>(bytes, x);
    case TensorType::Q5_0: return dot_quantized<TensorType::Q5_0>(bytes, x);
    case TensorType::Q5_1: return dot_quantized<TensorType::Q5_1>(bytes, x);
    case TensorType::Q4_K: return dot_quantized<TensorType::Q4_K>(bytes, x);
    case TensorType::Q5_K: return dot_quantized<TensorType::Q5_K>(bytes, x);
    case TensorType::Q6_K: return dot_quantized<TensorType::Q6_K>(bytes, x);
    default: fail("dot products of type {} are not supported yet", type_name(type));
  }
}

void matvec_rows_kernel(TensorType type, const uint8_t* weights, size_t stride,
                        const PreparedInput& x, int64_t row_begin, int64_t row_end, float* y) {
  if (type != x.weight_type()) fail("internal error: input prepared for another type");
  // Float rows go straight to the float dot: on short rows (a KV cache head: 64 to 256 values)
  // dispatching each one through dot() costs as much as the row.
  const bool float_rows = is_float_type(type);
  const size_t row_size = std::min(stride, row_bytes(type, x.size()));
  for (int64_t r = row_begin; r < row_end; ++r) {
    // Decode is bound by memory latency: ask for the next row while this one is computed.
    if (r + 1 < row_end) prefetch(weights + (r + 1) * stride, row_size);
    const uint8_t* row = weights + r * stride;
    y[r] = float_rows ? dot_float_row(type, row, x) : dot_kernel(type, row, x);
  }
}

void matmul_rows_kernel(TensorType type, const uint8_t* weights, size_t stride,
                        const PreparedInput* xs, int64_t n_tokens, int64_t row_begin,
                        int64_t row_end, float* y, int64_t ldy) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    if (xs[t].weight_type() != type) fail("internal error: input prepared for another type");
  }
  if (is_float_type(type)) {
    // Straight to the float dot: on short rows (the compact predictors' B has rank values)
    // dispatching each row through dot() costs as much as the row.
    for (int64_t r = row_begin; r < row_end; ++r) {
      const uint8_t* row = weights + r * stride;
      for (int64_t t = 0; t < n_tokens; ++t) y[t * ldy + r] = dot_float_row(type, row, xs[t]);
    }
    return;
  }
  if (n_tokens > 0) {
    switch (type) {
#define FLASHLM_MATMUL(T) \
  case TensorType::T: \
    return matmul_quantized<TensorType::T>(weights, stride, xs, n_tokens, row_begin, row_end, y, ldy);
      FLASHLM_MATMUL(Q8_0)
      FLASHLM_MATMUL(Q4_0)
      FLASHLM_MATMUL(Q4_1)
      FLASHLM_MATMUL(Q5_0)
      FLASHLM_MATMUL(Q5_1)
      FLASHLM_MATMUL(Q4_K)
      FLASHLM_MATMUL(Q5_K)
      FLASHLM_MATMUL(Q6_K)
#undef FLASHLM_MATMUL
      default: fail("matrix products of type {} are not supported yet", type_name(type));
    }
  }
}

namespace {

// Lanes(df) int8 values from q, widened to float (exactly).
template <class DF>
HWY_INLINE hn::Vec<DF> widen_int8(DF df, const int8_t* q) {
  const hn::Rebind<int32_t, DF> di32;
  const hn::Rebind<int16_t, DF> di16;
  const hn::Rebind<int8_t, DF> di8;
  return hn::ConvertTo(df, hn::PromoteTo(di32, hn::PromoteTo(di16, hn::LoadU(di8, q))));
}

// y[0..32) = scale * q[0..32), the int8 values widened to float in vector lanes.
HWY_INLINE void dequantize_int8_block(const int8_t* q, float scale, float* y) {
  const hn::CappedTag<float, 8> df;
  const auto vs = hn::Set(df, scale);
  for (int i = 0; i < kQK; i += static_cast<int>(hn::Lanes(df))) {
    hn::StoreU(hn::Mul(widen_int8(df, q + i), vs), df, y + i);
  }
}

}  // namespace

namespace {

// Every group of a row unpacked as the dot kernels unpack it, then d * w + block minimum in
// float lanes: value i of a group is d * w[i] + block_min[i / 32] (see "Unpacking"). Calls
// use(k, v) with the vector v of values k .. k + Lanes(df) - 1, in order.
// Group g alone: use(i, v) with the values i .. i + Lanes(df) - 1 of the group.
template <TensorType T, class DF, class Use>
HWY_INLINE void for_group_values(DF df, const uint8_t* row, int64_t g, Use use) {
  constexpr int64_t kCount = kGroup<T>;
  alignas(64) int16_t w[kCount];
  float block_min[kCount / kQK] = {};
  const hn::Rebind<int16_t, DF> d16;
  const hn::Rebind<int32_t, DF> d32;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const auto vd = hn::Set(df, unpack_group<T>(row, g, w, block_min));
  for (int64_t b = 0; b < kCount / kQK; ++b) {
    const auto vm = hn::Set(df, is_asymmetric(T) ? block_min[b] : 0.0f);
    for (int64_t i = b * kQK; i < (b + 1) * kQK; i += lanes) {
      const auto v = hn::ConvertTo(df, hn::PromoteTo(d32, hn::LoadU(d16, w + i)));
      use(i, hn::MulAdd(v, vd, vm));
    }
  }
}

template <TensorType T, class DF, class Use>
HWY_INLINE void for_each_value(DF df, const uint8_t* row, int64_t n, Use use) {
  constexpr int64_t kCount = kGroup<T>;
  for (int64_t g = 0; g < n / kCount; ++g) {
    for_group_values<T>(df, row, g, [&](int64_t i, auto v) { use(g * kCount + i, v); });
  }
}

// The lanes the group kernels decode and multiply-add in (8: every group is whole vectors).
using DGroupF32 = hn::CappedTag<float, 8>;

template <TensorType T>
void dequantize_groups(const uint8_t* row, float* dst, int64_t n) {
  const DGroupF32 df;
  for_each_value<T>(df, row, n, [&](int64_t k, auto v) { hn::StoreU(v, df, dst + k); });
}

// y += a * values, one vector: the multiply-add of axpy_groups and of axpy_row_tokens.
HWY_INLINE void add_scaled(DGroupF32 df, hn::Vec<DGroupF32> va, hn::Vec<DGroupF32> v, float* y) {
  hn::StoreU(hn::MulAdd(va, v, hn::LoadU(df, y)), df, y);
}

// y += a * row, each value decoded as dequantize_groups decodes it and multiplied in at once
// (the down projection of 4-6-bit bundles, `convert --down-type`: no float row in between).
template <TensorType T>
void axpy_groups(const uint8_t* row, float a, float* y, int64_t n) {
  const DGroupF32 df;
  const auto va = hn::Set(df, a);
  for_each_value<T>(df, row, n, [&](int64_t k, auto v) { add_scaled(df, va, v, y + k); });
}

template <TensorType T>
using Type = std::integral_constant<TensorType, T>;

// Calls f(Type<T>()) for the quantized types the group kernels decode (all but Q8_0's own
// path, F16 and F32) and returns true, when n is whole groups; false otherwise.
template <class F>
bool with_group_type(TensorType type, int64_t n, F f) {
  const auto call = [&](auto t) {
    if (n % kGroup<decltype(t)::value> != 0) return false;
    f(t);
    return true;
  };
  switch (type) {
    case TensorType::Q4_0:
      return call(Type<TensorType::Q4_0>());
    case TensorType::Q4_1:
      return call(Type<TensorType::Q4_1>());
    case TensorType::Q5_0:
      return call(Type<TensorType::Q5_0>());
    case TensorType::Q5_1:
      return call(Type<TensorType::Q5_1>());
    case TensorType::Q4_K:
      return call(Type<TensorType::Q4_K>());
    case TensorType::Q5_K:
      return call(Type<TensorType::Q5_K>());
    case TensorType::Q6_K:
      return call(Type<TensorType::Q6_K>());
    default:
      return false;
  }
}

bool dequantize_by_groups(TensorType type, const void* src, float* dst, int64_t n) {
  return with_group_type(type, n, [&](auto t) {
    dequantize_groups<decltype(t)::value>(static_cast<const uint8_t*>(src), dst, n);
  });
}

}  // namespace

void dequantize_row_kernel(TensorType type, const void* src, float* dst, int64_t n) {
  if (dequantize_by_groups(type, src, dst, n)) return;
  if (type == TensorType::Q8_0 && n % kQK == 0) {
    const auto* b = static_cast<const BlockQ8_0*>(src);
    for (int64_t i = 0; i < n / kQK; ++i) {
      dequantize_int8_block(b[i].qs, half_to_float(b[i].d), dst + i * kQK);
    }
    return;
  }
  if (type == TensorType::F16) {
    const hn::ScalableTag<float> d;
    const hn::Rebind<hwy::float16_t, decltype(d)> dh;
    const auto* h = static_cast<const hwy::float16_t*>(src);
    const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
    int64_t i = 0;
    for (; i + lanes <= n; i += lanes) hn::StoreU(hn::PromoteTo(d, hn::LoadU(dh, h + i)), d, dst + i);
    for (; i < n; ++i) dst[i] = half_to_float(static_cast<const uint16_t*>(src)[i]);
    return;
  }
  dequantize_row_reference(type, src, dst, n);
}

void quantize_row_kernel(TensorType type, const float* src, void* dst, int64_t n) {
  // F16 is the KV cache's default: every new key and value is stored this way.
  if (type != TensorType::F16) return quantize_row_reference(type, src, dst, n);
#if HWY_TARGET == HWY_EMU128 || HWY_TARGET == HWY_SCALAR || \
    (HWY_ARCH_X86 && HWY_TARGET > HWY_AVX2)
  // No conversion instruction (x86 before F16C): Highway's emulation rounds otherwise than
  // IEEE (and the reference) at the edges, so the scalar conversion, bit for bit.
  for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = float_to_fp16(src[i]);
  return;
#endif
  const hn::ScalableTag<float> d;
  const hn::Rebind<hwy::float16_t, decltype(d)> dh;
  auto* h = static_cast<hwy::float16_t*>(dst);
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) hn::StoreU(hn::DemoteTo(dh, hn::LoadU(d, src + i)), dh, h + i);
  for (; i < n; ++i) static_cast<uint16_t*>(dst)[i] = float_to_fp16(src[i]);
}

namespace {

// y[0..32) += scale * q[0..32), the int8 values widened to float in vector lanes.
HWY_INLINE void axpy_int8_block(const int8_t* q, float scale, float* y) {
  const hn::CappedTag<float, 8> df;
  const auto vs = hn::Set(df, scale);
  for (int i = 0; i < kQK; i += static_cast<int>(hn::Lanes(df))) {
    hn::StoreU(hn::MulAdd(widen_int8(df, q + i), vs, hn::LoadU(df, y + i)), df, y + i);
  }
}

}  // namespace

void axpy_row_kernel(TensorType type, const void* row, float a, float* y, int64_t n) {
  if (type == TensorType::F32) return axpy_f32_kernel(a, static_cast<const float*>(row), y, n);
  if (type == TensorType::F16) return axpy_f16(a, static_cast<const uint16_t*>(row), y, n);
  if (type == TensorType::Q8_0) {
    // The down projection of the bundles: the hot loop of the sparse FFN.
    const auto* b = static_cast<const BlockQ8_0*>(row);
    for (int64_t i = 0; i < n / kQK; ++i) axpy_int8_block(b[i].qs, a * half_to_float(b[i].d), y + i * kQK);
    return;
  }
  if (with_group_type(type, n, [&](auto t) {
        axpy_groups<decltype(t)::value>(static_cast<const uint8_t*>(row), a, y, n);
      })) {
    return;
  }
  const int64_t block = type_traits(type).block_size;
  const size_t block_bytes = type_traits(type).block_bytes;
  constexpr int64_t kSlice = 256;
  float buffer[kSlice];
  const int64_t slice = std::max(block, kSlice / block * block);
  for (int64_t i = 0; i < n; i += slice) {
    const int64_t m = std::min(slice, n - i);
    dequantize_row_kernel(type, static_cast<const uint8_t*>(row) + i / block * block_bytes,
                          buffer, m);
    axpy_f32_kernel(a, buffer, y + i, m);
  }
}

void axpy_row_tokens_kernel(TensorType type, const void* row, const float* a, int64_t n_tokens,
                            float* y, int64_t ldy, int64_t n) {
  if (n_tokens == 1) {  // nothing to share a decoded row with: axpy_row's fused decode
    if (a[0] != 0.0f) axpy_row_kernel(type, row, a[0], y, n);
    return;
  }
  if (type == TensorType::F32 || type == TensorType::F16) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      if (a[t] != 0.0f) axpy_row_kernel(type, row, a[t], y + t * ldy, n);
    }
    return;
  }
  thread_local std::vector<float> decoded;  // the row, for all tokens
  if (static_cast<int64_t>(decoded.size()) < n) decoded.resize(static_cast<size_t>(n));
  if (dequantize_by_groups(type, row, decoded.data(), n)) {
    // The row decoded once, then each token's multiply-adds exactly as axpy_groups does them.
    const DGroupF32 df;
    const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
    for (int64_t t = 0; t < n_tokens; ++t) {
      if (a[t] == 0.0f) continue;
      const auto va = hn::Set(df, a[t]);
      for (int64_t k = 0; k < n; k += lanes) {
        add_scaled(df, va, hn::LoadU(df, decoded.data() + k), y + t * ldy + k);
      }
    }
    return;
  }
  if (type != TensorType::Q8_0) {
    // The row decoded once (as axpy_row decodes it, slice by slice), then each token's
    // multiply-adds exactly as axpy_row does them.
    const int64_t block = type_traits(type).block_size;
    const size_t block_bytes = type_traits(type).block_bytes;
    const int64_t slice = std::max<int64_t>(block, 256 / block * block);
    for (int64_t i = 0; i < n; i += slice) {
      dequantize_row_kernel(type, static_cast<const uint8_t*>(row) + i / block * block_bytes,
                            decoded.data() + i, std::min(slice, n - i));
    }
    for (int64_t t = 0; t < n_tokens; ++t) {
      if (a[t] == 0.0f) continue;
      for (int64_t i = 0; i < n; i += slice) {
        axpy_f32_kernel(a[t], decoded.data() + i, y + t * ldy + i, std::min(slice, n - i));
      }
    }
    return;
  }
  // The row's int8 values widened to float once for all tokens; then per token exactly the
  // multiply-adds axpy_int8_block does (lane-wise, so the vector width does not matter), so
  // every token's sum equals a one-token call's.
  const hn::CappedTag<float, 16> df;
  const int lanes = static_cast<int>(hn::Lanes(df));
  const auto* b = static_cast<const BlockQ8_0*>(row);
  const int64_t blocks = n / kQK;
  thread_local hwy::AlignedFreeUniquePtr<float[]> values;
  thread_local std::vector<float> scales;
  thread_local int64_t capacity = 0;
  if (capacity < n) {
    values = hwy::AllocateAligned<float>(static_cast<size_t>(n));
    capacity = n;
  }
  if (static_cast<int64_t>(scales.size()) < blocks) scales.resize(blocks);
  float* q = values.get();
  for (int64_t i = 0; i < blocks; ++i) {
    for (int j = 0; j < kQK; j += lanes) {
      hn::Store(widen_int8(df, b[i].qs + j), df, q + i * kQK + j);
    }
    scales[i] = half_to_float(b[i].d);
  }
  for (int64_t t = 0; t < n_tokens; ++t) {
    if (a[t] == 0.0f) continue;
    float* out = y + t * ldy;
    for (int64_t i = 0; i < blocks; ++i) {
      const auto vs = hn::Set(df, a[t] * scales[i]);
      for (int j = 0; j < kQK; j += lanes) {
        const int64_t k = i * kQK + j;
        hn::StoreU(hn::MulAdd(hn::Load(df, q + k), vs, hn::LoadU(df, out + k)), df, out + k);
      }
    }
  }
}

namespace {

// One vector of columns of kT tokens' sums (token t's at out + t * ldy), the partial sums in
// registers across rows 0..n_rows: sum_t += factor(r, t) * value(r), row after row, skipping a
// token whose a (a[r * n_tokens + t]) is 0 (under its threshold), as axpy_row skips it alone.
// Per token and element these are axpy_row's multiply-adds in row order, so every token gets
// what one-token calls row after row give it.
template <int kT, class DF, class Value, class Factor>
HWY_INLINE void add_rows_in_registers(DF df, float* out, int64_t ldy, int64_t n_rows,
                                      const float* a, int64_t n_tokens, Value value,
                                      Factor factor) {
  // One named accumulator per token (sizeless SVE vectors cannot form an array).
#define FLASHLM_EACH_TOKEN(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define FLASHLM_LOAD(t) \
  [[maybe_unused]] auto acc##t = t < kT ? hn::LoadU(df, out + t * ldy) : hn::Zero(df);
  FLASHLM_EACH_TOKEN(FLASHLM_LOAD)
  for (int64_t r = 0; r < n_rows; ++r) {
    const auto v = value(r);
#define FLASHLM_ADD(t)                                                    \
  if constexpr (t < kT) {                                                 \
    if (a[r * n_tokens + t] != 0.0f) {                                    \
      acc##t = hn::MulAdd(v, hn::Set(df, factor(r, t)), acc##t);         \
    }                                                                     \
  }
    FLASHLM_EACH_TOKEN(FLASHLM_ADD)
  }
#define FLASHLM_STORE(t) \
  if constexpr (t < kT) hn::StoreU(acc##t, df, out + t * ldy);
  FLASHLM_EACH_TOKEN(FLASHLM_STORE)
#undef FLASHLM_STORE
#undef FLASHLM_ADD
#undef FLASHLM_LOAD
#undef FLASHLM_EACH_TOKEN
}

constexpr int64_t kGroupTokens = 8;  // partial sums in registers: 8 tokens' worth

// Calls f(std::integral_constant<int, kT>(), t0) for the tokens t0 .. t0 + kT - 1, in groups
// of up to kGroupTokens.
template <class F>
void for_token_groups(int64_t n_tokens, F f) {
  for (int64_t t0 = 0; t0 < n_tokens; t0 += kGroupTokens) {
    switch (std::min(kGroupTokens, n_tokens - t0)) {
#define FLASHLM_TOKENS(k) \
  case k: f(std::integral_constant<int, k>(), t0); break;
      FLASHLM_TOKENS(1) FLASHLM_TOKENS(2) FLASHLM_TOKENS(3) FLASHLM_TOKENS(4)
      FLASHLM_TOKENS(5) FLASHLM_TOKENS(6) FLASHLM_TOKENS(7) FLASHLM_TOKENS(8)
#undef FLASHLM_TOKENS
    }
  }
}

// Q8_0 rows (row r at rows + r * stride) into kT tokens' sums, one vector of columns at a
// time, each row's int8 values widened once for all tokens.
template <int kT>
void axpy_q8_rows_tokens(const uint8_t* rows, size_t stride, int64_t n_rows, const float* a,
                         int64_t n_tokens, float* y, int64_t ldy, int64_t n) {
  const hn::CappedTag<float, 16> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  thread_local std::vector<float> scaled;  // a[r][t] times the row's block scale
  scaled.resize(static_cast<size_t>(n_rows) * kT);
  const auto block = [&](int64_t r, int64_t i) {
    return reinterpret_cast<const BlockQ8_0*>(rows + r * stride) + i;
  };
  for (int64_t i = 0; i < n / kQK; ++i) {
    for (int64_t r = 0; r < n_rows; ++r) {
      const float d = half_to_float(block(r, i)->d);
      for (int t = 0; t < kT; ++t) scaled[r * kT + t] = a[r * n_tokens + t] * d;
    }
    for (int64_t j = 0; j < kQK; j += lanes) {
      add_rows_in_registers<kT>(
          df, y + i * kQK + j, ldy, n_rows, a, n_tokens,
          [&](int64_t r) { return widen_int8(df, block(r, i)->qs + j); },
          [&](int64_t r, int t) { return scaled[r * kT + t]; });
    }
  }
}

// The 4-6-bit down types (`convert --down-type`): group by group (256 columns of a K-quant,
// 32 of the simple types), each row's group decoded once into a small buffer (as axpy_groups
// decodes it: a * v + y per element, so the width and the order of a and v do not matter),
// then every token's sums over those columns in registers across the rows. One token
// included: the sum is loaded and stored once per run of rows instead of once a row.
template <TensorType T>
void axpy_group_rows_tokens(const uint8_t* rows, size_t stride, int64_t n_rows, const float* a,
                            int64_t n_tokens, float* y, int64_t ldy, int64_t n) {
  constexpr int64_t kCount = kGroup<T>;
  const hn::CappedTag<float, 16> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  thread_local hwy::AlignedFreeUniquePtr<float[]> values;
  thread_local int64_t capacity = 0;
  if (capacity < n_rows * kCount) {
    values = hwy::AllocateAligned<float>(static_cast<size_t>(n_rows * kCount));
    capacity = n_rows * kCount;
  }
  for (int64_t g = 0; g < n / kCount; ++g) {
    for (int64_t r = 0; r < n_rows; ++r) {
      float* out = values.get() + r * kCount;
      for_group_values<T>(df, rows + r * stride, g,
                          [&](int64_t i, auto v) { hn::Store(v, df, out + i); });
    }
    for_token_groups(n_tokens, [&](auto k_tokens, int64_t t0) {
      constexpr int kT = decltype(k_tokens)::value;
      for (int64_t j = 0; j < kCount; j += lanes) {
        add_rows_in_registers<kT>(
            df, y + t0 * ldy + g * kCount + j, ldy, n_rows, a + t0, n_tokens,
            [&](int64_t r) { return hn::Load(df, values.get() + r * kCount + j); },
            [&](int64_t r, int t) { return a[r * n_tokens + t0 + t]; });
      }
    });
  }
}

}  // namespace

void axpy_rows_tokens_kernel(TensorType type, const uint8_t* rows, size_t stride, int64_t n_rows,
                             const float* a, int64_t n_tokens, float* y, int64_t ldy, int64_t n) {
  if (with_group_type(type, n, [&](auto t) {
        axpy_group_rows_tokens<decltype(t)::value>(rows, stride, n_rows, a, n_tokens, y, ldy, n);
      })) {
    return;
  }
  if (type != TensorType::Q8_0 || n % kQK != 0) {
    for (int64_t r = 0; r < n_rows; ++r) {
      axpy_row_tokens_kernel(type, rows + r * stride, a + r * n_tokens, n_tokens, y, ldy, n);
    }
    return;
  }
  for_token_groups(n_tokens, [&](auto k_tokens, int64_t t0) {
    axpy_q8_rows_tokens<decltype(k_tokens)::value>(rows, stride, n_rows, a + t0, n_tokens,
                                                   y + t0 * ldy, ldy, n);
  });
}

float dot_f32_kernel(const float* a, const float* b, int64_t n) {
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

void axpy_f32_kernel(float a, const float* x, float* y, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto va = hn::Set(d, a);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    hn::StoreU(hn::MulAdd(va, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, y + i);
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

void scale_f32_kernel(float* x, float a, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto va = hn::Set(d, a);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), va), d, x + i);
  for (; i < n; ++i) x[i] *= a;
}

}  // namespace HWY_NAMESPACE
}  // namespace flashlm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace flashlm {
namespace {

bool is_float_weights(TensorType t) {
  return t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16;
}

}  // namespace

HWY_EXPORT(quantize_input_kernel);
HWY_EXPORT(dot_kernel);
HWY_EXPORT(matvec_rows_kernel);
HWY_EXPORT(matmul_rows_kernel);
HWY_EXPORT(dequantize_row_kernel);
HWY_EXPORT(quantize_row_kernel);
HWY_EXPORT(axpy_row_kernel);
HWY_EXPORT(axpy_row_tokens_kernel);
HWY_EXPORT(axpy_rows_tokens_kernel);
HWY_EXPORT(dot_f32_kernel);
HWY_EXPORT(axpy_f32_kernel);
HWY_EXPORT(scale_f32_kernel);

size_t PreparedInput::bytes(TensorType weight_type, int64_t n) {
  if (is_float_weights(weight_type)) return static_cast<size_t>(n) * sizeof(float);
  const int64_t groups = n / type_traits(weight_type).block_size, blocks = n / kQK;
  return static_cast<size_t>(n) * sizeof(int16_t) +
         static_cast<size_t>(groups + blocks) * sizeof(float);
}

void PreparedInput::prepare(TensorType weight_type, const float* x, int64_t n) {
  type_ = weight_type;
  n_ = n;
  if (is_float_weights(weight_type)) {
    values_.assign(x, x + n);
    return;
  }
  // One scale per group of the weight type: 32 values for the simple types, 256 for the
  // K-quants (like llama.cpp's Q8_K), so a K-quant super-block sums in integers.
  const int64_t group = type_traits(weight_type).block_size;
  if (n % group != 0) fail("cannot prepare an input of {} values: not a multiple of {}", n, group);
  group_ = group;
  q_.resize(n);
  scale_.resize(n / group);
  HWY_DYNAMIC_DISPATCH(quantize_input_kernel)(x, n, group, q_.data(), scale_.data());
  scaled_block_sum_.resize(n / kQK);
  for (int64_t b = 0; b < n / kQK; ++b) {
    int32_t sum = 0;
    for (int j = 0; j < kQK; ++j) sum += q_[b * kQK + j];
    scaled_block_sum_[b] = scale_[b * kQK / group] * static_cast<float>(sum);
  }
}

float dot(TensorType type, const void* row, const PreparedInput& x) {
  return HWY_DYNAMIC_DISPATCH(dot_kernel)(type, row, x);
}

void matvec_rows(TensorType type, const uint8_t* weights, size_t stride, const PreparedInput& x,
                 int64_t row_begin, int64_t row_end, float* y) {
  HWY_DYNAMIC_DISPATCH(matvec_rows_kernel)(type, weights, stride, x, row_begin, row_end, y);
}

void matmul_rows(TensorType type, const uint8_t* weights, size_t stride, const PreparedInput* xs,
                 int64_t n_tokens, int64_t row_begin, int64_t row_end, float* y, int64_t ldy) {
  HWY_DYNAMIC_DISPATCH(matmul_rows_kernel)(type, weights, stride, xs, n_tokens, row_begin,
                                           row_end, y, ldy);
}

bool has_dequantize_kernel(TensorType type) {
  return type != TensorType::F32 && type != TensorType::BF16;
}

void dequantize_row(TensorType type, const void* src, float* dst, int64_t n) {
  HWY_DYNAMIC_DISPATCH(dequantize_row_kernel)(type, src, dst, n);
}

void quantize_row(TensorType type, const float* src, void* dst, int64_t n) {
  HWY_DYNAMIC_DISPATCH(quantize_row_kernel)(type, src, dst, n);
}

void axpy_row(TensorType type, const void* row, float a, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(axpy_row_kernel)(type, row, a, y, n);
}

void axpy_row_tokens(TensorType type, const void* row, const float* a, int64_t n_tokens, float* y,
                     int64_t ldy, int64_t n) {
  HWY_DYNAMIC_DISPATCH(axpy_row_tokens_kernel)(type, row, a, n_tokens, y, ldy, n);
}

void axpy_rows_tokens(TensorType type, const uint8_t* rows, size_t stride, int64_t n_rows,
                      const float* a, int64_t n_tokens, float* y, int64_t ldy, int64_t n) {
  HWY_DYNAMIC_DISPATCH(axpy_rows_tokens_kernel)(type, rows, stride, n_rows, a, n_tokens, y, ldy, n);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(dot_f32_kernel)(a, b, n);
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(axpy_f32_kernel)(a, x, y, n);
}

void scale_f32(float* x, float a, int64_t n) { HWY_DYNAMIC_DISPATCH(scale_f32_kernel)(x, a, n); }

std::string kernel_target() {
  // The dispatch picks the best target compiled in that the CPU supports: the lowest bit.
  const int64_t usable = hwy::SupportedTargets() & HWY_TARGETS;
  return hwy::TargetName(usable & -usable);
}

}  // namespace flashlm
#endif  // HWY_ONCE
