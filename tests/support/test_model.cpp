#include "support/test_model.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "flash/flash_layout.h"
#include "gguf/gguf_writer.h"
#include "quant/reference.h"

namespace flashlm::testing {
namespace {

// GPT-2's byte-to-unicode table: printable bytes map to themselves, the others, in byte
// order, to U+0100 onwards.
std::vector<std::string> byte_tokens() {
  std::vector<std::string> tokens;
  int next_code = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const int cp = printable ? b : next_code++;
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    tokens.push_back(s);
  }
  return tokens;
}

std::vector<uint8_t> encode(TensorType type, const std::vector<float>& values) {
  std::vector<uint8_t> out(row_bytes(type, static_cast<int64_t>(values.size())));
  quantize_row_reference(type, values.data(), out.data(), static_cast<int64_t>(values.size()));
  return out;
}

}  // namespace

std::vector<float> random_floats(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::string temp_path(const std::string& name) {
  static const std::filesystem::path dir = [] {
    // /tmp may be tmpfs, where O_DIRECT is refused; the build tree is on the real disk.
    std::filesystem::path base = std::filesystem::current_path() / "test-tmp";
    std::filesystem::path d = base / std::to_string(::getpid());
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(std::filesystem::current_path() / "test-tmp" /
                                      std::to_string(::getpid()),
                                  ec);
    });
    return d;
  }();
  return (dir / name).string();
}

void write_tiny_model(const std::string& path, const TinyModelSpec& s) {
  GgufWriter w;
  const std::string a = s.architecture;
  w.add_string("general.architecture", a);
  w.add_string("general.name", "tiny-" + a);
  w.add_uint32(a + ".block_count", s.n_layers);
  w.add_uint32(a + ".context_length", s.context_length);
  w.add_uint32(a + ".embedding_length", s.d_model);
  w.add_uint32(a + ".feed_forward_length", s.d_ff);
  w.add_uint32(a + ".attention.head_count", s.n_heads);
  w.add_uint32(a + ".attention.head_count_kv", s.n_kv_heads);
  w.add_float32(a + ".rope.freq_base", 10000.f);
  w.add_float32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  if (a == "gemma3") w.add_uint32(a + ".attention.sliding_window", 4);  // layers 0-4 local

  std::vector<std::string> tokens = byte_tokens();
  std::vector<int32_t> types(tokens.size(), 1);
  for (const std::string& special : {s.end_of_text, std::string("<|im_start|>"),
                                     std::string("<|im_end|>")}) {
    tokens.push_back(special);
    types.push_back(3);
  }
  for (int i = 0; i < s.padding_tokens; ++i) {
    tokens.push_back("[PAD" + std::to_string(tokens.size()) + "]");
    types.push_back(5);
  }
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", a == "qwen2" ? "qwen2" : "smollm");
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  w.add_int32_array("tokenizer.ggml.token_type", types);
  w.add_string_array("tokenizer.ggml.merges", {});
  w.add_uint32("tokenizer.ggml.bos_token_id", 257);
  w.add_uint32("tokenizer.ggml.eos_token_id", 258);
  w.add_bool("tokenizer.ggml.add_bos_token", false);

  uint64_t seed = s.seed;
  const int head_dim = s.d_model / s.n_heads;
  auto matrix = [&](const std::string& name, int rows, int cols) {
    // Scale like a trained layer so activations stay O(1) through the stack.
    const float scale = 1.0f / std::sqrt(static_cast<float>(cols));
    auto values = random_floats(static_cast<size_t>(rows) * cols, ++seed, scale);
    w.add_tensor(name, s.weight_type, {cols, rows}, encode(s.weight_type, values));
  };
  auto vector = [&](const std::string& name, int n, float center, float spread) {
    auto values = random_floats(n, ++seed, spread);
    for (float& v : values) v += center;
    w.add_tensor(name, TensorType::F32, {n}, encode(TensorType::F32, values));
  };
  const int rows = kTinyVocab + s.padding_tokens;
  matrix("token_embd.weight", rows, s.d_model);
  if (!s.tied_embeddings) matrix("output.weight", rows, s.d_model);
  vector("output_norm.weight", s.d_model, 1.0f, 0.1f);
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    vector(p + "attn_norm.weight", s.d_model, 1.0f, 0.1f);
    matrix(p + "attn_q.weight", s.n_heads * head_dim, s.d_model);
    matrix(p + "attn_k.weight", s.n_kv_heads * head_dim, s.d_model);
    matrix(p + "attn_v.weight", s.n_kv_heads * head_dim, s.d_model);
    matrix(p + "attn_output.weight", s.d_model, s.n_heads * head_dim);
    if (a == "gemma3") {
      vector(p + "attn_q_norm.weight", head_dim, 1.0f, 0.1f);
      vector(p + "attn_k_norm.weight", head_dim, 1.0f, 0.1f);
      vector(p + "post_attention_norm.weight", s.d_model, 1.0f, 0.1f);
      vector(p + "post_ffw_norm.weight", s.d_model, 1.0f, 0.1f);
    }
    if (a == "qwen2") {
      vector(p + "attn_q.bias", s.n_heads * head_dim, 0.f, 0.1f);
      vector(p + "attn_k.bias", s.n_kv_heads * head_dim, 0.f, 0.1f);
      vector(p + "attn_v.bias", s.n_kv_heads * head_dim, 0.f, 0.1f);
    }
    vector(p + "ffn_norm.weight", s.d_model, 1.0f, 0.1f);
    matrix(p + "ffn_gate.weight", s.d_ff, s.d_model);
    matrix(p + "ffn_up.weight", s.d_ff, s.d_model);
    matrix(p + "ffn_down.weight", s.d_model, s.d_ff);
  }
  w.write(path);
}

TinyFlm write_tiny_flm(const std::string& name, const TinyModelSpec& spec) {
  TinyFlm m{temp_path(name + ".gguf"), temp_path(name + ".flm")};
  write_tiny_model(m.gguf, spec);
  convert_to_flm(m.gguf, m.flm, {.force = true});
  return m;
}

}  // namespace flashlm::testing
