// Small synthetic models written as real GGUF files, for tests that need only structure.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/types.h"

namespace flashlm::testing {

struct TinyModelSpec {
  // "llama", "qwen2" or "gemma3" (with its q/k and post norms, GELU, a sliding window of 4)
  std::string architecture = "llama";
  int n_layers = 2;
  int d_model = 64;
  int d_ff = 128;
  int n_heads = 4;
  int n_kv_heads = 2;
  int context_length = 256;
  TensorType weight_type = TensorType::F32;  // for the 2-D matrices
  bool tied_embeddings = true;
  uint64_t seed = 1;
  // Vocabulary variants (speculative decoding's vocabulary check): the text of token 256, and
  // "[PADn]" entries of type UNUSED after the tokens, with rows of their own, as llama.cpp's
  // converter pads Qwen2.5's vocabulary to its model's rows.
  std::string end_of_text = "<|endoftext|>";
  int padding_tokens = 0;
};

// Vocabulary: the 256 GPT-2 byte tokens, then <|endoftext|>, <|im_start|>, <|im_end|>.
constexpr int kTinyVocab = 259;

// Writes the model to `path` (byte-level BPE tokenizer with no merges, random weights).
void write_tiny_model(const std::string& path, const TinyModelSpec& spec = {});

// A tiny model written as `name`.gguf and converted to `name`.flm (default bundles) beside it,
// both under temp_path.
struct TinyFlm {
  std::string gguf, flm;
};
TinyFlm write_tiny_flm(const std::string& name, const TinyModelSpec& spec = {});

// A unique path in a fresh folder on the real disk (not tmpfs), removed at process exit.
std::string temp_path(const std::string& name);

// Random floats in [-scale, scale] from a seed.
std::vector<float> random_floats(size_t n, uint64_t seed, float scale = 1.0f);

}  // namespace flashlm::testing
