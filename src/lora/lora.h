// LoRA adapters: W x + s * B (A x) beside a frozen, quantized W, never merged into it.
//
// The file format is llama.cpp's (so adapters move between the two engines both ways): a GGUF
// with general.type = "adapter", adapter.type = "lora", adapter.lora.alpha (float32) and
// general.architecture = the base model's; for every adapted base tensor NAME (for example
// blk.3.attn_q.weight) two tensors NAME.lora_a with dims {in, rank} (rank rows of `in` values)
// and NAME.lora_b with dims {rank, out} (out rows of `rank` values). The scale of a pair is
// user_scale * alpha / rank, or user_scale when alpha is 0 (llama.cpp's rule).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace flashlm {

// What an adapter is made for and checked against: the model's architecture and the shapes
// of its matrices (ModelConfig::lora_shapes() gives them; lora/ sits below model/).
struct LoraShapes {
  std::string architecture;
  int n_layers = 0;
  int64_t d_model = 0, q_dim = 0, kv_dim = 0, d_ff = 0;
  bool ffn_gated = true;
};

// The matrices an adapter may adapt, with llama.cpp's tensor names (blk.N.<name>.weight).
enum class LoraTarget { AttnQ, AttnK, AttnV, AttnOutput, FfnGate, FfnUp, FfnDown };
inline constexpr int kLoraTargets = 7;
const char* lora_target_name(LoraTarget target);  // "attn_q", ...
// "attn_q,attn_v,ffn_down" (or "all", "attn", "ffn") as targets; throws on an unknown name.
std::vector<LoraTarget> parse_lora_targets(const std::string& list);
bool is_ffn_target(LoraTarget target);
// The adapted base tensor's GGUF name: blk.<layer>.<target>.weight.
std::string lora_base_tensor_name(int layer, LoraTarget target);
// The shape the base model gives the adapted matrix: rows (outputs) and columns (inputs).
int64_t lora_target_rows(const LoraShapes& shapes, LoraTarget target);
int64_t lora_target_cols(const LoraShapes& shapes, LoraTarget target);

// One adapted matrix: a (rank x in, row-major) and b (out x rank).
struct LoraPair {
  int64_t rank = 0, in = 0, out = 0;
  std::vector<float> a, b;
  bool empty() const { return rank == 0; }
};

struct LoraAdapter {
  std::string path;  // where it was loaded from (for messages); empty for a new one
  std::string architecture;
  float alpha = 0;
  // [layer][target]; an empty pair leaves that matrix as it is.
  std::vector<std::array<LoraPair, kLoraTargets>> layers;

  const LoraPair& pair(int layer, LoraTarget t) const {
    return layers[layer][static_cast<int>(t)];
  }
  LoraPair& pair(int layer, LoraTarget t) { return layers[layer][static_cast<int>(t)]; }
  bool adapts_ffn() const;
  int64_t parameters() const;
  uint64_t bytes() const { return static_cast<uint64_t>(parameters()) * sizeof(float); }

  // Reads a llama.cpp LoRA GGUF for the model `config` describes; every problem (not an
  // adapter, another architecture, a shape that does not fit this model, an unknown tensor,
  // an unsupported tensor type) is an Error that names the tensor and what to do.
  static LoraAdapter load(const std::string& path, const LoraShapes& model);
  // The bytes load() will hold for the file's LoRA tensors (as floats), for the memory plan;
  // 0 when the file cannot be read (load() then says why).
  static uint64_t file_float_bytes(const std::string& path);
  // Writes it in the same format (F32 tensors). `base_name` goes to general.name.
  void save(const std::string& out_path, const std::string& base_name = "") const;
};

// The adapters a run applies, each with its user scale (--lora FILE, --lora-scale FILE S).
class LoraSet {
 public:
  void add(const LoraAdapter& adapter, float scale);
  bool empty() const { return entries_.empty(); }
  bool adapts_ffn() const;
  bool adapts(int layer, LoraTarget target) const;
  uint64_t bytes() const;

  // y[t] += sum over adapters of s * B (A x[t]) for t < n_tokens; x is n_tokens x in, y
  // n_tokens x out (the adapted matrix's shapes).
  void apply(int layer, LoraTarget target, const float* x, int64_t n_tokens, float* y) const;

  // What apply() adds, computed the plain way (dequantized nothing, doubles): the tests' twin.
  static void apply_reference(const LoraPair& pair, float scale, const float* x, int64_t n_tokens,
                              float* y);
  // The factor a pair of `adapter` is applied with at user scale `scale`.
  static float pair_scale(const LoraAdapter& adapter, const LoraPair& pair, float scale);

 private:
  struct Entry {
    const LoraAdapter* adapter;
    float scale;
  };
  std::vector<Entry> entries_;
};

}  // namespace flashlm
