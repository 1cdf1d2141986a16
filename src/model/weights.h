// Views of a model's weight tensors, checked against the configuration.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "quant/matrix.h"

namespace flashlm {

class GgufFile;

struct LayerWeights {
  Vector attn_norm;
  Matrix wq, wk, wv, wo;
  Vector bq, bk, bv;
  Vector q_norm, k_norm;  // per-head RMSNorm (Gemma 3)
  Vector post_attn_norm;  // Gemma
  Vector ffn_norm;
  Matrix ffn_gate, ffn_up, ffn_down;  // gate/up: d_ff x d_model; down: d_model x d_ff
  Vector post_ffn_norm;  // Gemma
};

struct ModelWeights {
  Matrix token_embedding;  // vocab x d_model
  std::vector<LayerWeights> layers;
  Vector output_norm;
  Matrix output;  // vocab x d_model; the embedding matrix when tied

  // Maps every tensor of the architecture; throws a clear error when one is missing, has an
  // unexpected shape, or a type without kernels. With `require_ffn` false the FFN tensors may
  // be absent (the flash store keeps them in a separate file).
  static ModelWeights from_gguf(const GgufFile& file, const ModelConfig& config,
                                bool require_ffn = true);
};

}  // namespace flashlm
