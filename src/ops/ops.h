// The dense building blocks of a transformer layer, on float activations.
// Matrix products go through the quantized kernels in quant/kernels.h.
#pragma once

#include <cstdint>

#include "quant/matrix.h"

namespace flashlm {

class ThreadPool;

// The FFN's activation function.
enum class Activation { SiLU, GELU, ReLU, ReLU2 };

// How rotary embeddings pair up the dimensions of a head: adjacent pairs (2i, 2i+1), as
// llama.cpp stores Llama weights, or halves (i, i + d/2), as Qwen2 and Gemma use.
enum class RopeStyle { Adjacent, Halves };

// y = x / rms(x) * weight, for each of n_rows rows of length n.
void rms_norm(const float* x, const float* weight, float* y, int64_t n_rows, int64_t n, float eps);

// Y[t, :] = W X[t, :] (+ bias), for t < n_tokens. X is n_tokens x W.cols, Y n_tokens x W.rows.
void linear(const Matrix& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            const Vector& bias = {});

// Rotates the first rope_dims dimensions of each head of x (n_heads x head_dim) for position
// `position`.
void apply_rope(float* x, int n_heads, int head_dim, int rope_dims, RopeStyle style,
                int64_t position, float base, float scale);

// Numerically stable in-place softmax.
void softmax(float* x, int64_t n);

// h = act(gate) * up (gated) or h = act(up) (gate == nullptr), n elements.
void gated_activation(Activation act, const float* gate, const float* up, float* h, int64_t n);
float activate(Activation act, float x);

}  // namespace flashlm
