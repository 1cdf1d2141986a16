#include "ops/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/thread_pool.h"
#include "quant/kernels.h"

namespace flashlm {

void rms_norm(const float* x, const float* weight, float* y, int64_t n_rows, int64_t n,
              float eps) {
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    const float mean_square = dot_f32(xr, xr, n) / static_cast<float>(n);
    const float inv = 1.0f / std::sqrt(mean_square + eps);
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * inv * weight[i];
  }
}

void linear(const Matrix& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            const Vector& bias) {
  // Per calling thread; the workers must see the caller's vector, not a thread_local of their
  // own, hence the reference.
  thread_local std::vector<PreparedInput> caller_inputs;
  std::vector<PreparedInput>& inputs = caller_inputs;
  if (static_cast<int64_t>(inputs.size()) < n_tokens) inputs.resize(n_tokens);
  pool.parallel_for(n_tokens, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) inputs[t].prepare(w.type, x + t * w.cols, w.cols);
  });
  // Rows are split in chunks of 16 so each thread streams contiguous weight memory.
  pool.parallel_for(
      w.rows,
      [&](int64_t begin, int64_t end, int) {
        if (n_tokens == 1) {
          matvec_rows(w.type, w.data, w.row_bytes, inputs[0], begin, end, y);
        } else {
          matmul_rows(w.type, w.data, w.row_bytes, inputs.data(), n_tokens, begin, end, y, w.rows);
        }
      },
      16);
  if (bias) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      float* yt = y + t * w.rows;
      for (int64_t r = 0; r < w.rows; ++r) yt[r] += bias.data[r];
    }
  }
}

void apply_rope(float* x, int n_heads, int head_dim, int rope_dims, RopeStyle style,
                int64_t position, float base, float scale) {
  const int half = rope_dims / 2;
  const float pos = static_cast<float>(position) * scale;
  for (int i = 0; i < half; ++i) {
    const float theta = pos * std::pow(base, -2.0f * static_cast<float>(i) / rope_dims);
    const float c = std::cos(theta), s = std::sin(theta);
    for (int h = 0; h < n_heads; ++h) {
      float* head = x + h * head_dim;
      const int a = style == RopeStyle::Adjacent ? 2 * i : i;
      const int b = style == RopeStyle::Adjacent ? 2 * i + 1 : i + half;
      const float x0 = head[a], x1 = head[b];
      // Fused multiply-adds written out, so every build and CPU rounds alike (as llama.cpp,
      // which fuses them): left to the compiler, only a -march=native build fuses, and Gemma's
      // perplexity moves by 0.6% between the two.
      head[a] = std::fma(x0, c, -x1 * s);
      head[b] = std::fma(x0, s, x1 * c);
    }
  }
}

void softmax(float* x, int64_t n) {
  const float max = *std::max_element(x, x + n);
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

float activate(Activation act, float x) {
  switch (act) {
    case Activation::SiLU: return x / (1.0f + std::exp(-x));
    case Activation::GELU: {
      // The tanh approximation, which Gemma was trained with (fused as in apply_rope).
      constexpr float kSqrt2OverPi = 0.7978845608028654f;
      return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * std::fma(0.044715f * x * x, x, x)));
    }
    case Activation::ReLU: return x > 0.f ? x : 0.f;
    case Activation::ReLU2: return x > 0.f ? x * x : 0.f;
  }
  return x;
}

void gated_activation(Activation act, const float* gate, const float* up, float* h, int64_t n) {
  if (gate) {
    for (int64_t i = 0; i < n; ++i) h[i] = activate(act, gate[i]) * up[i];
  } else {
    for (int64_t i = 0; i < n; ++i) h[i] = activate(act, up[i]);
  }
}

}  // namespace flashlm
