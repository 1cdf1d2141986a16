// Views of weight tensors in their stored (quantized) form: what the kernels and the dense
// ops take. The model's weights (model/weights.h) are made of these.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/types.h"

namespace flashlm {

// A row-major matrix of `rows` rows of `cols` elements, stored in `type` blocks; row r starts
// at data + r * row_bytes. Used as y = W x with W of shape rows x cols.
struct Matrix {
  TensorType type = TensorType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }
  size_t bytes() const { return static_cast<size_t>(rows) * row_bytes; }
};

// A vector of F32 values (norm weights, biases); empty when the model has none.
struct Vector {
  const float* data = nullptr;
  int64_t size = 0;
  explicit operator bool() const { return data != nullptr; }
};

}  // namespace flashlm
