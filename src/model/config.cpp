#include "model/config.h"

#include <cmath>

#include "common/error.h"
#include "gguf/gguf.h"

namespace flashlm {

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::SiLU: return "silu";
    case Activation::GELU: return "gelu";
    case Activation::ReLU: return "relu";
    case Activation::ReLU2: return "relu2";
  }
  return "?";
}

Activation parse_activation(const std::string& name) {
  if (name == "silu" || name == "swiglu") return Activation::SiLU;
  if (name == "gelu" || name == "geglu") return Activation::GELU;
  if (name == "relu") return Activation::ReLU;
  if (name == "relu2" || name == "relu_squared") return Activation::ReLU2;
  fail("unknown FFN activation '{}'; use silu, gelu, relu or relu2", name);
}

namespace {

// Limits checked before anything is allocated from these numbers.
constexpr int kMaxLayers = 1024;
constexpr int kMaxDim = 1 << 17;
constexpr int kMaxHeads = 1024;
constexpr int kMaxVocab = 1 << 22;

int checked(const GgufFile& f, const std::string& key, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    fail("{}: metadata '{}' = {} is outside the supported range [{}, {}]", f.path(), key, value, lo,
         hi);
  }
  return static_cast<int>(value);
}

}  // namespace

ModelConfig ModelConfig::from_gguf(const GgufFile& f) {
  ModelConfig c;
  c.architecture = f.get_string("general.architecture");
  const std::string& a = c.architecture;
  if (a != "llama" && a != "qwen2" && a != "gemma3") {
    fail("{}: architecture '{}' is not supported yet (supported: llama, qwen2, gemma3)", f.path(),
         a);
  }
  c.name = f.find_string("general.name").value_or(a);
  auto key = [&](const char* suffix) { return a + "." + suffix; };
  auto get = [&](const char* suffix, int64_t lo, int64_t hi) {
    return checked(f, key(suffix), f.get_int(key(suffix)), lo, hi);
  };
  c.n_layers = get("block_count", 1, kMaxLayers);
  c.d_model = get("embedding_length", 1, kMaxDim);
  c.d_ff = get("feed_forward_length", 1, kMaxDim * 8);
  c.n_heads = get("attention.head_count", 1, kMaxHeads);
  c.n_kv_heads = f.has(key("attention.head_count_kv")) ? get("attention.head_count_kv", 1, kMaxHeads)
                                                       : c.n_heads;
  if (c.n_heads % c.n_kv_heads != 0) {
    fail("{}: {} attention heads cannot be grouped over {} key/value heads", f.path(), c.n_heads,
         c.n_kv_heads);
  }
  if (!f.has(key("attention.key_length")) && c.d_model % c.n_heads != 0) {
    fail("{}: embedding length {} is not a multiple of {} attention heads, and no "
         "attention.key_length says how wide a head is",
         f.path(), c.d_model, c.n_heads);
  }
  c.head_dim = f.has(key("attention.key_length")) ? get("attention.key_length", 1, kMaxDim)
                                                  : c.d_model / c.n_heads;
  // Per-token activations are n_heads * head_dim wide; keep that within what a weight matrix
  // row can be (kMaxDim) so no product of two limits reaches the allocator.
  if (static_cast<int64_t>(c.n_heads) * c.head_dim > kMaxDim) {
    fail("{}: {} heads of {} dimensions ({} in all) are more than the supported {}", f.path(),
         c.n_heads, c.head_dim, static_cast<int64_t>(c.n_heads) * c.head_dim, kMaxDim);
  }
  c.value_dim = f.has(key("attention.value_length")) ? get("attention.value_length", 1, kMaxDim)
                                                     : c.head_dim;
  if (c.value_dim != c.head_dim) {
    fail("{}: key length {} differs from value length {}; not supported yet", f.path(), c.head_dim,
         c.value_dim);
  }
  c.context_length = get("context_length", 1, 1 << 24);
  c.rms_eps = static_cast<float>(f.get_float(key("attention.layer_norm_rms_epsilon")));
  c.rope_base = static_cast<float>(f.find_float(key("rope.freq_base")).value_or(10000.0));
  if (auto factor = f.find_float(key("rope.scaling.factor")); factor && *factor > 0) {
    c.rope_scale = static_cast<float>(1.0 / *factor);
  }
  c.rope_dims = f.has(key("rope.dimension_count")) ? get("rope.dimension_count", 2, c.head_dim)
                                                   : c.head_dim;

  // The tied-embedding vocabulary size is the authority; the metadata key is optional.
  const int64_t vocab = static_cast<int64_t>(f.get_string_array("tokenizer.ggml.tokens").size());
  c.vocab_size = checked(f, "tokenizer.ggml.tokens (count)", vocab, 1, kMaxVocab);

  if (a == "llama") {
    c.rope_style = RopeStyle::Adjacent;
  } else if (a == "qwen2") {
    c.rope_style = RopeStyle::Halves;
    c.qkv_bias = true;
  } else if (a == "gemma3") {
    c.rope_style = RopeStyle::Halves;
    c.activation = Activation::GELU;
    c.qk_norm = true;
    c.post_norms = true;
    c.scale_embeddings = true;
    c.sliding_window = get("attention.sliding_window", 1, 1 << 24);
    c.sliding_window_pattern = 6;
    c.rope_base_local = 10000.f;
  }
  c.attention_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  // ReLU-family conversions (ReluLLaMA, ProSparse, TurboSparse) keep the llama architecture
  // and say so in this key.
  if (auto act = f.find_string(key("ffn_activation"))) c.activation = parse_activation(*act);
  return c;
}

std::string ModelConfig::summary() const {
  return fmt::format(
      "{} ({}): {} layers, d_model {}, d_ff {}, heads {}/{} kv, head_dim {}, vocab {}, ctx {}, "
      "ffn {}{}",
      name, architecture, n_layers, d_model, d_ff, n_heads, n_kv_heads, head_dim, vocab_size,
      context_length, activation_name(activation), ffn_gated ? " gated" : "");
}

}  // namespace flashlm
