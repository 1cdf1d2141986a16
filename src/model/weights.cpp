#include "model/weights.h"

#include "common/error.h"
#include "gguf/gguf.h"

namespace flashlm {
namespace {

class TensorMapper {
 public:
  explicit TensorMapper(const GgufFile& f) : f_(f) {}

  Matrix matrix(const std::string& name, int64_t rows, int64_t cols) const {
    const GgufTensor& t = f_.tensor(name);
    if (t.dims.size() != 2 || t.dims[0] != cols || t.dims[1] != rows) {
      fail("{}: tensor '{}' has shape {}, expected {} x {}", f_.path(), name, t.shape_string(),
           cols, rows);
    }
    require_computable(t);
    return Matrix{t.type, f_.tensor_data(t).data(), rows, cols, row_bytes(t.type, cols)};
  }

  Vector vector(const std::string& name, int64_t size) const {
    const GgufTensor& t = f_.tensor(name);
    if (t.elements() != size) {
      fail("{}: tensor '{}' has {} elements, expected {}", f_.path(), name, t.elements(), size);
    }
    if (t.type != TensorType::F32) {
      fail("{}: tensor '{}' is {}, expected F32 for norms and biases", f_.path(), name,
           type_name(t.type));
    }
    return Vector{reinterpret_cast<const float*>(f_.tensor_data(t).data()), size};
  }

  Vector optional_vector(const std::string& name, int64_t size) const {
    return f_.find_tensor(name) ? vector(name, size) : Vector{};
  }

  bool has(const std::string& name) const { return f_.find_tensor(name) != nullptr; }

 private:
  void require_computable(const GgufTensor& t) const {
    if (!type_traits(t.type).computable) {
      fail("{}: tensor '{}' uses type {}, which flashlm cannot compute with yet (supported: F32, "
           "F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K); re-quantize the model to "
           "one of these",
           f_.path(), t.name, type_name(t.type));
    }
  }
  const GgufFile& f_;
};

}  // namespace

ModelWeights ModelWeights::from_gguf(const GgufFile& f, const ModelConfig& c, bool require_ffn) {
  const TensorMapper m(f);
  ModelWeights w;
  w.token_embedding = m.matrix("token_embd.weight", c.vocab_size, c.d_model);
  w.output_norm = m.vector("output_norm.weight", c.d_model);
  w.output = m.has("output.weight") ? m.matrix("output.weight", c.vocab_size, c.d_model)
                                    : w.token_embedding;
  w.layers.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    l.attn_norm = m.vector(p + "attn_norm.weight", c.d_model);
    l.wq = m.matrix(p + "attn_q.weight", c.q_dim(), c.d_model);
    l.wk = m.matrix(p + "attn_k.weight", c.kv_dim(), c.d_model);
    l.wv = m.matrix(p + "attn_v.weight", c.v_dim(), c.d_model);
    l.wo = m.matrix(p + "attn_output.weight", c.d_model, c.q_dim());
    if (c.qkv_bias) {
      l.bq = m.vector(p + "attn_q.bias", c.q_dim());
      l.bk = m.vector(p + "attn_k.bias", c.kv_dim());
      l.bv = m.vector(p + "attn_v.bias", c.v_dim());
    }
    if (c.qk_norm) {
      l.q_norm = m.vector(p + "attn_q_norm.weight", c.head_dim);
      l.k_norm = m.vector(p + "attn_k_norm.weight", c.head_dim);
    }
    if (c.post_norms) {
      l.post_attn_norm = m.vector(p + "post_attention_norm.weight", c.d_model);
      l.post_ffn_norm = m.vector(p + "post_ffw_norm.weight", c.d_model);
    }
    l.ffn_norm = m.vector(p + "ffn_norm.weight", c.d_model);
    if (require_ffn) {
      if (c.ffn_gated) l.ffn_gate = m.matrix(p + "ffn_gate.weight", c.d_ff, c.d_model);
      l.ffn_up = m.matrix(p + "ffn_up.weight", c.d_ff, c.d_model);
      l.ffn_down = m.matrix(p + "ffn_down.weight", c.d_model, c.d_ff);
    }
  }
  return w;
}

}  // namespace flashlm
