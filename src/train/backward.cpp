#include "train/backward.h"

#include <algorithm>
#include <cmath>

#include "common/thread_pool.h"
#include "ops/ops.h"
#include "quant/kernels.h"

namespace flashlm {

void rms_norm_backward(const float* x, const float* w, const float* dy, float* dx, int64_t n_rows,
                       int64_t n, float eps) {
  // y_i = x_i r w_i, r = (mean x^2 + eps)^-1/2: dx_i = r g_i - r^3 x_i (g . x) / n, g = dy w.
  for (int64_t row = 0; row < n_rows; ++row) {
    const float* xr = x + row * n;
    const float* dyr = dy + row * n;
    float* dxr = dx + row * n;
    double ms = 0, gx = 0;
    for (int64_t i = 0; i < n; ++i) {
      ms += double(xr[i]) * xr[i];
      gx += double(dyr[i]) * w[i] * xr[i];
    }
    const double r = 1.0 / std::sqrt(ms / n + eps);
    const double c = r * r * r * gx / n;
    for (int64_t i = 0; i < n; ++i) dxr[i] += static_cast<float>(r * dyr[i] * w[i] - c * xr[i]);
  }
}

void rope_backward(float* dy, int n_heads, int head_dim, int rope_dims, RopeStyle style,
                   int64_t position, float base, float scale) {
  // R(theta)^T = R(-theta).
  apply_rope(dy, n_heads, head_dim, rope_dims, style, -position, base, scale);
}

float activation_derivative(Activation act, float x) {
  switch (act) {
    case Activation::SiLU: {
      const float s = 1.0f / (1.0f + std::exp(-x));
      return s * (1.0f + x * (1.0f - s));
    }
    case Activation::GELU: {
      constexpr float k = 0.7978845608028654f;
      const float u = k * (x + 0.044715f * x * x * x);
      const float t = std::tanh(u);
      return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3 * 0.044715f * x * x);
    }
    case Activation::ReLU: return x > 0.f ? 1.f : 0.f;
    case Activation::ReLU2: return x > 0.f ? 2 * x : 0.f;
  }
  return 1.f;
}

void gated_activation_backward(Activation act, const float* gate, const float* up,
                               const float* dh, float* dgate, float* dup, int64_t n) {
  if (gate) {
    for (int64_t i = 0; i < n; ++i) {
      dgate[i] += dh[i] * up[i] * activation_derivative(act, gate[i]);
      dup[i] += dh[i] * activate(act, gate[i]);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) dup[i] += dh[i] * activation_derivative(act, up[i]);
  }
}

void linear_backward_input(const Matrix& w, const float* dy, int64_t n, float* dx,
                           ThreadPool& pool) {
  // dy transposed to one coefficient per token for each row, so that a row is decoded once
  // for all the tokens of a thread.
  thread_local std::vector<float> coeff;
  coeff.resize(static_cast<size_t>(w.rows * n));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < w.rows; ++r) coeff[r * n + t] = dy[t * w.rows + r];
  }
  const float* c = coeff.data();
  pool.parallel_for(n, [&](int64_t begin, int64_t end, int) {
    for (int64_t r = 0; r < w.rows; ++r) {
      axpy_row_tokens(w.type, w.row(r), c + r * n + begin, end - begin, dx + begin * w.cols,
                      w.cols, w.cols);
    }
  });
}

void attention_forward(const float* q, const float* k, const float* v, int64_t n, int n_heads,
                       int n_kv_heads, int hd, float scale, int window, float* p, float* out,
                       ThreadPool& pool) {
  const int group = n_heads / n_kv_heads;
  const int64_t qd = static_cast<int64_t>(n_heads) * hd, kd = static_cast<int64_t>(n_kv_heads) * hd;
  pool.parallel_for(n * n_heads, [&](int64_t begin, int64_t end, int) {
    for (int64_t job = begin; job < end; ++job) {
      const int h = static_cast<int>(job / n);
      const int64_t t = job % n;
      const int g = h / group;
      float* row = p + (static_cast<int64_t>(h) * n + t) * n;
      std::fill_n(row, n, 0.0f);
      const int64_t first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
      const float* qt = q + t * qd + h * hd;
      for (int64_t s = first; s <= t; ++s) row[s] = scale * dot_f32(qt, k + s * kd + g * hd, hd);
      softmax(row + first, t - first + 1);
      float* o = out + t * qd + h * hd;
      std::fill_n(o, hd, 0.0f);
      for (int64_t s = first; s <= t; ++s) axpy_f32(row[s], v + s * kd + g * hd, o, hd);
    }
  });
}

void attention_backward(const float* q, const float* k, const float* v, const float* p,
                        const float* dout, int64_t n, int n_heads, int n_kv_heads, int hd,
                        float scale, float* dq, float* dk, float* dv, ThreadPool& pool) {
  const int group = n_heads / n_kv_heads;
  const int64_t qd = static_cast<int64_t>(n_heads) * hd, kd = static_cast<int64_t>(n_kv_heads) * hd;
  // One job per kv head: its query heads write dq of their own, and dk, dv of this kv head
  // only, so no two threads write the same values.
  pool.parallel_for(n_kv_heads, [&](int64_t begin, int64_t end, int) {
    std::vector<float> dp(static_cast<size_t>(n));
    for (int64_t g = begin; g < end; ++g) {
      for (int h = static_cast<int>(g) * group; h < (static_cast<int>(g) + 1) * group; ++h) {
        for (int64_t t = 0; t < n; ++t) {
          const float* row = p + (static_cast<int64_t>(h) * n + t) * n;
          const float* dot_ = dout + t * qd + h * hd;
          // dv_s += p_ts do_t; dp_ts = do_t . v_s; ds = p (dp - sum p dp).
          double sum = 0;
          for (int64_t s = 0; s <= t; ++s) {
            if (row[s] == 0.0f) {
              dp[s] = 0;
              continue;
            }
            axpy_f32(row[s], dot_, dv + s * kd + g * hd, hd);
            dp[s] = dot_f32(dot_, v + s * kd + g * hd, hd);
            sum += double(row[s]) * dp[s];
          }
          const float* qt = q + t * qd + h * hd;
          float* dqt = dq + t * qd + h * hd;
          for (int64_t s = 0; s <= t; ++s) {
            if (row[s] == 0.0f) continue;
            const float ds = scale * row[s] * static_cast<float>(dp[s] - sum);
            axpy_f32(ds, k + s * kd + g * hd, dqt, hd);
            axpy_f32(ds, qt, dk + s * kd + g * hd, hd);
          }
        }
      }
    }
  });
}

void lora_backward(const LoraPair& pair, float s, const float* x, const float* dy, int64_t n,
                   float* da, float* db, float* dx) {
  const int64_t rank = pair.rank, in = pair.in, out = pair.out;
  std::vector<float> u(static_cast<size_t>(rank)), du(static_cast<size_t>(rank));
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * in;
    const float* dyt = dy + t * out;
    // u = A x; dB += s dy u^T; du = s B^T dy; dA += du x^T; dx += A^T du.
    for (int64_t r = 0; r < rank; ++r) u[r] = dot_f32(pair.a.data() + r * in, xt, in);
    std::fill(du.begin(), du.end(), 0.0f);
    for (int64_t o = 0; o < out; ++o) {
      const float g = s * dyt[o];
      if (g == 0.0f) continue;
      for (int64_t r = 0; r < rank; ++r) {
        db[o * rank + r] += g * u[r];
        du[r] += g * pair.b[o * rank + r];
      }
    }
    for (int64_t r = 0; r < rank; ++r) {
      axpy_f32(du[r], xt, da + r * in, in);
      if (dx) axpy_f32(du[r], pair.a.data() + r * in, dx + t * in, in);
    }
  }
}

}  // namespace flashlm
