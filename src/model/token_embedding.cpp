#include "model/token_embedding.h"

#include "quant/kernels.h"

namespace flashlm {

void ResidentEmbedding::rows(std::span<const int32_t> tokens, float* out) {
  for (size_t t = 0; t < tokens.size(); ++t) {
    dequantize_row(table_.type, table_.row(tokens[t]), out + t * table_.cols, table_.cols);
  }
}

}  // namespace flashlm
