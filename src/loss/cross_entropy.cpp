#include "loss/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "common/thread_pool.h"
#include "quant/kernels.h"

namespace flashlm {
namespace {

void check_targets(const Matrix& w, int64_t n, const int32_t* targets) {
  for (int64_t t = 0; t < n; ++t) {
    if (targets[t] < 0 || targets[t] >= w.rows) {
      fail("target token {} (position {}) is outside the vocabulary 0..{}", targets[t], t,
           w.rows - 1);
    }
  }
}

int64_t tile_rows(const Matrix& w, const TiledLossOptions& o) {
  if (o.tile <= 0) fail("the loss tile must hold at least one vocabulary row (got {})", o.tile);
  return std::min(o.tile, w.rows);
}

// Every token's input prepared once for the output matrix's kernels.
std::vector<PreparedInput> prepare_inputs(const Matrix& w, const float* h, int64_t n,
                                          ThreadPool& pool) {
  std::vector<PreparedInput> xs(static_cast<size_t>(n));
  pool.parallel_for(n, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) xs[t].prepare(w.type, h + t * w.cols, w.cols);
  });
  return xs;
}

// logits[t * tile + (v - v0)] = W_v . h_t for v in [v0, v1): the rows split among the threads.
void tile_logits(const Matrix& w, const std::vector<PreparedInput>& xs, int64_t v0, int64_t v1,
                 int64_t ld, float* logits, ThreadPool& pool) {
  const int64_t n = static_cast<int64_t>(xs.size());
  pool.parallel_for(
      v1 - v0,
      [&](int64_t begin, int64_t end, int) {
        const uint8_t* rows = w.row(v0);
        if (n == 1) {
          matvec_rows(w.type, rows, w.row_bytes, xs[0], begin, end, logits);
        } else {
          matmul_rows(w.type, rows, w.row_bytes, xs.data(), n, begin, end, logits, ld);
        }
      },
      16);
}

}  // namespace

uint64_t tiled_loss_scratch_bytes(const Matrix& w, int64_t n, const TiledLossOptions& o) {
  const uint64_t tile = static_cast<uint64_t>(tile_rows(w, o));
  // The tile's logits, their transpose in the backward, two floats per token, the prepared
  // inputs.
  return 2 * tile * n * sizeof(float) + 2 * n * sizeof(float) +
         n * PreparedInput::bytes(w.type, w.cols);
}

void tiled_cross_entropy(const Matrix& w, const float* h, int64_t n, const int32_t* targets,
                         float* nll, float* lse, ThreadPool& pool, const TiledLossOptions& o) {
  if (n <= 0) return;
  check_targets(w, n, targets);
  const int64_t tile = tile_rows(w, o);
  const std::vector<PreparedInput> xs = prepare_inputs(w, h, n, pool);
  std::vector<float> logits(static_cast<size_t>(tile * n));
  std::vector<float> running_max(n, -std::numeric_limits<float>::infinity());
  std::vector<double> running_sum(n, 0.0);
  std::vector<float> target_logit(n, 0.0f);
  if (o.prefetch_rows) o.prefetch_rows(0, tile);
  for (int64_t v0 = 0; v0 < w.rows; v0 += tile) {
    const int64_t v1 = std::min(w.rows, v0 + tile), count = v1 - v0;
    if (o.prefetch_rows) o.prefetch_rows(v1, v1 + tile);
    tile_logits(w, xs, v0, v1, tile, logits.data(), pool);
    if (o.release_rows) o.release_rows(v0, v1);
    // Fold the tile into each token's running log-sum-exp: sum * e^(old max - new max).
    pool.parallel_for(n, [&](int64_t begin, int64_t end, int) {
      for (int64_t t = begin; t < end; ++t) {
        const float* l = logits.data() + t * tile;
        const float m = std::max(running_max[t], *std::max_element(l, l + count));
        double s = running_sum[t] * std::exp(double{running_max[t]} - m);
        for (int64_t v = 0; v < count; ++v) s += std::exp(double{l[v]} - m);
        running_max[t] = m;
        running_sum[t] = s;
        if (targets[t] >= v0 && targets[t] < v1) target_logit[t] = l[targets[t] - v0];
      }
    });
  }
  for (int64_t t = 0; t < n; ++t) {
    lse[t] = static_cast<float>(running_max[t] + std::log(running_sum[t]));
    nll[t] = lse[t] - target_logit[t];
  }
}

void tiled_cross_entropy_backward(const Matrix& w, const float* h, int64_t n,
                                  const int32_t* targets, const float* lse, const float* grad,
                                  float* dh, ThreadPool& pool, const TiledLossOptions& o,
                                  TiledLossStats* stats) {
  if (n <= 0) return;
  check_targets(w, n, targets);
  const int64_t tile = tile_rows(w, o), d = w.cols;
  const std::vector<PreparedInput> xs = prepare_inputs(w, h, n, pool);
  std::vector<float> logits(static_cast<size_t>(tile * n));
  std::vector<float> coeff(static_cast<size_t>(tile * n));  // [row][token]: grad_t * softmax
  std::vector<uint8_t> keep(static_cast<size_t>(tile));
  TiledLossStats local;
  if (o.prefetch_rows) o.prefetch_rows(0, tile);
  for (int64_t v0 = 0; v0 < w.rows; v0 += tile) {
    const int64_t v1 = std::min(w.rows, v0 + tile), count = v1 - v0;
    if (o.prefetch_rows) o.prefetch_rows(v1, v1 + tile);
    tile_logits(w, xs, v0, v1, tile, logits.data(), pool);
    // The softmax from the forward's lse, transposed to one coefficient per token per row; a
    // row is kept when any token's softmax reaches the filter.
    pool.parallel_for(count, [&](int64_t begin, int64_t end, int) {
      for (int64_t v = begin; v < end; ++v) {
        bool any = false;
        for (int64_t t = 0; t < n; ++t) {
          const float p = std::exp(logits[t * tile + v] - lse[t]);
          const bool visible = p >= o.filter && grad[t] != 0.0f;
          coeff[v * n + t] = visible ? grad[t] * p : 0.0f;
          any |= visible;
        }
        keep[v] = any;
      }
    });
    // dh[t] += sum over kept rows of coeff * W_v: tokens split among the threads, each row
    // decoded once for a thread's tokens (no two threads write one token's gradient).
    pool.parallel_for(n, [&](int64_t begin, int64_t end, int) {
      for (int64_t v = 0; v < count; ++v) {
        if (!keep[v]) continue;
        axpy_row_tokens(w.type, w.row(v0 + v), coeff.data() + v * n + begin, end - begin,
                        dh + begin * d, d, d);
      }
    });
    for (int64_t v = 0; v < count; ++v) (keep[v] ? local.rows_computed : local.rows_skipped) += 1;
    // The target's part, - grad_t * W_{y_t}, whatever the filter did with its row: with its
    // tile, so that a head on flash is read once.
    for (int64_t t = 0; t < n; ++t) {
      if (grad[t] != 0.0f && targets[t] >= v0 && targets[t] < v1) {
        axpy_row(w.type, w.row(targets[t]), -grad[t], dh + t * d, d);
      }
    }
    if (o.release_rows) o.release_rows(v0, v1);
  }
  if (stats) {
    stats->rows_computed += local.rows_computed;
    stats->rows_skipped += local.rows_skipped;
  }
}

void naive_cross_entropy(const Matrix& w, const float* h, int64_t n, const int32_t* targets,
                         const float* grad, float* nll, float* dh, ThreadPool& pool) {
  if (n <= 0) return;
  check_targets(w, n, targets);
  const int64_t v = w.rows, d = w.cols;
  const std::vector<PreparedInput> xs = prepare_inputs(w, h, n, pool);
  // The two matrices the tiled loss avoids: the logits and their gradient (as a framework
  // holds them), n x vocab each.
  std::vector<float> logits(static_cast<size_t>(n * v));
  tile_logits(w, xs, 0, v, v, logits.data(), pool);
  std::vector<float> dlogits(dh ? static_cast<size_t>(n * v) : 0);  // [row][token]
  pool.parallel_for(n, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) {
      const float* l = logits.data() + t * v;
      const double m = *std::max_element(l, l + v);
      double s = 0;
      for (int64_t i = 0; i < v; ++i) s += std::exp(l[i] - m);
      const double lse = m + std::log(s);
      nll[t] = static_cast<float>(lse - l[targets[t]]);
      if (!dh) continue;
      for (int64_t i = 0; i < v; ++i) {
        dlogits[i * n + t] = static_cast<float>(grad[t] * (std::exp(l[i] - lse) - (i == targets[t])));
      }
    }
  });
  if (!dh) return;
  pool.parallel_for(n, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = 0; i < v; ++i) {
      axpy_row_tokens(w.type, w.row(i), dlogits.data() + i * n + begin, end - begin,
                      dh + begin * d, d, d);
    }
  });
}

}  // namespace flashlm
