// The backward of every op of the forward pass (model/transformer.cpp, ops/ops.h), for
// training LoRA adapters through a frozen, quantized model (MeBP). Each function adds the
// gradient with respect to its inputs to `d...` arrays the caller zeroed (+=), so that
// branches that meet (residuals, the three projections of one input) simply accumulate.
// Each has a plain twin in the tests (finite differences in double, and PyTorch's autograd).
#pragma once

#include <cstdint>
#include <vector>

#include "lora/lora.h"
#include "model/config.h"
#include "model/weights.h"

namespace flashlm {

class ThreadPool;

// y = x / rms(x) * w per row: dx += dy's gradient through it.
void rms_norm_backward(const float* x, const float* w, const float* dy, float* dx, int64_t n_rows,
                       int64_t n, float eps);

// Rotation of each head by the position's angles is orthogonal: its backward rotates dy back.
void rope_backward(float* dy, int n_heads, int head_dim, int rope_dims, RopeStyle style,
                   int64_t position, float base, float scale);

// h = act(gate) * up (gated; gate null: h = act(up)): dgate, dup += from dh.
void gated_activation_backward(Activation act, const float* gate, const float* up,
                               const float* dh, float* dgate, float* dup, int64_t n);
float activation_derivative(Activation act, float x);

// dx[t] += W^T dy[t] for t < n: the product with the transposed quantized matrix, row after
// row decoded once for a thread's share of the tokens (SIMD: axpy_row_tokens), never the
// whole matrix dequantized. dy is n x w.rows, dx n x w.cols.
void linear_backward_input(const Matrix& w, const float* dy, int64_t n, float* dx,
                           ThreadPool& pool);

// Causal grouped-query attention over one sequence of n tokens (positions 0..n-1), the
// training forward: q is n x (n_heads * hd), k and v n x (n_kv_heads * hd); keeps the
// probabilities `p` (n_heads x n x n, zero above the diagonal) for the backward. A window > 0
// limits each token to the last `window` positions (Gemma's local layers).
void attention_forward(const float* q, const float* k, const float* v, int64_t n, int n_heads,
                       int n_kv_heads, int hd, float scale, int window, float* p, float* out,
                       ThreadPool& pool);
void attention_backward(const float* q, const float* k, const float* v, const float* p,
                        const float* dout, int64_t n, int n_heads, int n_kv_heads, int hd,
                        float scale, float* dq, float* dk, float* dv, ThreadPool& pool);

// The gradient of a LoRA pair's output y += s B (A x) for n tokens: dA, dB (the pair's shapes)
// and dx += s A^T B^T dy.
void lora_backward(const LoraPair& pair, float s, const float* x, const float* dy, int64_t n,
                   float* da, float* db, float* dx);

}  // namespace flashlm
