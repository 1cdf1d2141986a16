// Plain scalar kernels: the obviously-correct twins that the SIMD kernels are tested against,
// and the quantizers used by `convert`, by tests to make tensors, by the compact predictors
// and (through quantize_row) by the KV cache.
#pragma once

#include <cstdint>

#include "quant/types.h"

namespace flashlm {

// dst[0..n) = the values of one row of n elements stored in `type`.
void dequantize_row_reference(TensorType type, const void* src, float* dst, int64_t n);
// The dot product of a stored row with float x, accumulated in double.
float dot_reference(TensorType type, const void* row, const float* x, int64_t n);
// Encodes n floats as `type` (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K).
void quantize_row_reference(TensorType type, const float* src, void* dst, int64_t n);

}  // namespace flashlm
