// Tensor element types as numbered by GGUF/ggml, with the block layout of each.
// Quantized types store `block_size` elements in `block_bytes` bytes; a row of n elements
// (n a multiple of block_size) takes n / block_size * block_bytes bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace flashlm {

enum class TensorType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
};

struct TypeTraits {
  const char* name = nullptr;  // nullptr: the number is not a known ggml type
  uint32_t block_size = 0;     // elements per block
  uint32_t block_bytes = 0;    // bytes per block
  bool computable = false;     // flashlm has dequantize and dot kernels for it
};

// Traits of a type number read from a file; `name == nullptr` when the number is unknown.
const TypeTraits& type_traits(uint32_t type_number);
inline const TypeTraits& type_traits(TensorType type) {
  return type_traits(static_cast<uint32_t>(type));
}
std::string type_name(TensorType type);

// Bytes taken by a row of `n` elements; throws flashlm::Error if n is not a whole number of
// blocks.
size_t row_bytes(TensorType type, int64_t n);

}  // namespace flashlm
