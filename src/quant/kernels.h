// The fast kernels, SIMD through Highway: dot products of stored (quantized) rows with
// activations, and the float helpers of the forward pass. Each has a scalar twin in
// reference.h that the tests compare it with, on every SIMD target compiled in. One binary
// carries all targets and runs the best the CPU supports. Single-threaded: callers split rows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "quant/types.h"

namespace flashlm {

// An activation vector prepared once for dot products with many rows of one weight type.
// For quantized weights x is quantized to int8 in groups of the weight type's block size (one
// float scale each, like llama.cpp's Q8_0 and Q8_K activations), so the inner loops are integer multiply-adds; for float weights
// x is kept as is.
class PreparedInput {
 public:
  void prepare(TensorType weight_type, const float* x, int64_t n);
  // The memory an input of n values prepared for `weight_type` holds.
  static size_t bytes(TensorType weight_type, int64_t n);
  int64_t size() const { return n_; }
  TensorType weight_type() const { return type_; }

  // Quantized form: q[i] ~ x[i] / scale[i / group()]; group() is 32 for the simple types and
  // 256 for the K-quants.
  int64_t group() const { return group_; }
  const int16_t* q() const { return q_.data(); }
  const float* scale() const { return scale_.data(); }
  // Sum of the quantized x over the 32 values of block b, times its group's scale.
  const float* scaled_block_sum() const { return scaled_block_sum_.data(); }
  const float* values() const { return values_.data(); }

 private:
  TensorType type_ = TensorType::F32;
  int64_t n_ = 0;
  int64_t group_ = 32;
  std::vector<int16_t> q_;
  std::vector<float> scale_;
  std::vector<float> scaled_block_sum_;
  std::vector<float> values_;
};

// Dot product of one stored row with a prepared input of the same length.
float dot(TensorType type, const void* row, const PreparedInput& x);
// y[r] = dot(row r, x) for r in [row_begin, row_end); row r starts at weights + r * stride.
void matvec_rows(TensorType type, const uint8_t* weights, size_t row_stride_bytes,
                 const PreparedInput& x, int64_t row_begin, int64_t row_end, float* y);
// y[t * ldy + r] = dot(row r, xs[t]) for t < n_tokens, r in [row_begin, row_end); each row is
// read once for all tokens.
void matmul_rows(TensorType type, const uint8_t* weights, size_t row_stride_bytes,
                 const PreparedInput* xs, int64_t n_tokens, int64_t row_begin, int64_t row_end,
                 float* y, int64_t ldy);
// dst = the n values of a row of `type`: vector kernels for F16, Q8_0 and (rows of whole
// groups) the other quantized types, unpacked as the dot kernels unpack them; the scalar
// reference for BF16 and partial groups.
void dequantize_row(TensorType type, const void* src, float* dst, int64_t n);
bool has_dequantize_kernel(TensorType type);
// dst = n floats encoded as `type`, bit for bit as quantize_row_reference (F16 in vector lanes).
void quantize_row(TensorType type, const float* src, void* dst, int64_t n);
// y += a * row (the row dequantized), n elements.
void axpy_row(TensorType type, const void* row, float a, float* y, int64_t n);
// The same for several tokens at once: y[t * ldy ..] += a[t] * row for every t with a[t] != 0,
// each token's result bit for bit what axpy_row gives it alone (the row is decoded once).
void axpy_row_tokens(TensorType type, const void* row, const float* a, int64_t n_tokens, float* y,
                     int64_t ldy, int64_t n);
// Several rows at once (row r at rows + r * stride; a[r * n_tokens + t] for row r, token t):
// y[t * ldy ..] += sum over r of a[r * n_tokens + t] * row r, each token bit for bit what
// axpy_row calls for rows 0, 1, ... in turn give it (the sparse FFN's down projection of a run
// of neighbouring bundles for several tokens: partial sums stay in registers over the rows).
void axpy_rows_tokens(TensorType type, const uint8_t* rows, size_t stride, int64_t n_rows,
                      const float* a, int64_t n_tokens, float* y, int64_t ldy, int64_t n);

float dot_f32(const float* a, const float* b, int64_t n);
// Asks the CPU to start loading [data, data + bytes) into its caches; weights streamed from
// DRAM are latency-bound otherwise.
inline void prefetch(const void* data, size_t bytes) {
  for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(static_cast<const uint8_t*>(data) + off);
}
void axpy_f32(float a, const float* x, float* y, int64_t n);
void scale_f32(float* x, float a, int64_t n);

// The SIMD target these functions run on, chosen at the first call for the CPU at hand
// (Highway's dynamic dispatch): "AVX3_DL" (AVX-512 with VNNI), "AVX3", "AVX2", "SSE4",
// "NEON", "SVE", "EMU128" (scalar emulation), ...
std::string kernel_target();

}  // namespace flashlm
