// Where the rows of the token embedding come from. The forward pass asks for the rows of its
// tokens; by default (ResidentEmbedding) they are dequantized from the weights in DRAM; a .flm
// model whose embedding table is not also its output head can leave the table on flash
// (flash/flash_embedding.h): a token needs one row of it, not all.
#pragma once

#include <cstdint>
#include <span>

#include "model/weights.h"

namespace flashlm {

class TokenEmbedding {
 public:
  virtual ~TokenEmbedding() = default;
  // out[t * d_model ...] = the embedding row of tokens[t] (ids already checked in range).
  virtual void rows(std::span<const int32_t> tokens, float* out) = 0;
};

// The table in DRAM (the mapped model file), dequantized row by row.
class ResidentEmbedding : public TokenEmbedding {
 public:
  explicit ResidentEmbedding(const Matrix& table) : table_(table) {}
  void rows(std::span<const int32_t> tokens, float* out) override;

 private:
  const Matrix& table_;
};

}  // namespace flashlm
