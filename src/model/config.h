// Hyper-parameters of a decoder-only transformer, read from GGUF metadata.
#pragma once

#include <cstdint>
#include <string>

#include "lora/lora.h"
#include "ops/ops.h"

namespace flashlm {

class GgufFile;

const char* activation_name(Activation a);
Activation parse_activation(const std::string& name);  // "silu", "gelu", "relu", "relu2"

struct ModelConfig {
  std::string architecture;  // "llama", "qwen2", "gemma3"
  std::string name;
  int n_layers = 0;
  int d_model = 0;
  int d_ff = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;  // per head, for queries and keys
  int value_dim = 0;  // per head, for values
  int vocab_size = 0;
  int context_length = 0;
  float rms_eps = 1e-5f;
  float rope_base = 10000.f;
  float rope_scale = 1.f;  // positions are multiplied by this (linear scaling)
  int rope_dims = 0;       // leading dims of each head that rotate
  RopeStyle rope_style = RopeStyle::Adjacent;
  Activation activation = Activation::SiLU;
  bool ffn_gated = true;  // act(gate(x)) * up(x), or act(up(x)) when false
  bool qkv_bias = false;
  bool qk_norm = false;            // RMSNorm on each query/key head (Gemma 3)
  bool post_norms = false;         // RMSNorm after attention and after the FFN (Gemma 2/3)
  bool scale_embeddings = false;   // multiply embeddings by sqrt(d_model) (Gemma)
  float attention_scale = 0.f;     // multiplier of q.k
  // Sliding-window attention on some layers (Gemma 3: 5 local layers for every global one).
  int sliding_window = 0;
  int sliding_window_pattern = 0;  // every n-th layer is global; 0: no local layers
  float rope_base_local = 10000.f;

  bool is_local_layer(int layer) const {
    return sliding_window_pattern > 0 && (layer + 1) % sliding_window_pattern != 0;
  }
  int q_dim() const { return n_heads * head_dim; }
  // What a LoRA adapter of this model is made for and checked against.
  LoraShapes lora_shapes() const {
    return {architecture, n_layers, d_model, q_dim(), kv_dim(), d_ff, ffn_gated};
  }
  int kv_dim() const { return n_kv_heads * head_dim; }
  int v_dim() const { return n_kv_heads * value_dim; }

  static ModelConfig from_gguf(const GgufFile& file);
  std::string summary() const;
};

}  // namespace flashlm
