// The tiled (cut) cross-entropy against a plain double-precision twin, against the full-logits
// implementation, across tile sizes, and its gradient against finite differences.
#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "common/thread_pool.h"
#include "loss/cross_entropy.h"
#include "quant/kernels.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

struct StoredMatrix {
  std::vector<uint8_t> bytes;
  Matrix m;
};

// vocab x d random rows stored as `type`; `peak` adds a few large rows so that the softmax is
// as peaked as a trained model's (most rows then fall below the backward's filter).
StoredMatrix make_matrix(TensorType type, int64_t vocab, int64_t d, uint64_t seed) {
  StoredMatrix s;
  const size_t rb = row_bytes(type, d);
  s.bytes.resize(rb * vocab);
  const std::vector<float> values = testing::random_floats(vocab * d, seed, 0.5f);
  for (int64_t r = 0; r < vocab; ++r) quantize_row(type, values.data() + r * d, s.bytes.data() + r * rb, d);
  s.m = Matrix{type, s.bytes.data(), vocab, d, rb};
  return s;
}

// The definition, in double, from the dequantized rows and the unquantized hidden states.
void reference(const Matrix& w, const std::vector<float>& h, const std::vector<int32_t>& y,
               const std::vector<float>& grad, std::vector<double>& nll, std::vector<double>& dh) {
  const int64_t n = static_cast<int64_t>(y.size()), d = w.cols;
  std::vector<float> rows(w.rows * d);
  for (int64_t v = 0; v < w.rows; ++v) dequantize_row(w.type, w.row(v), rows.data() + v * d, d);
  nll.assign(n, 0);
  dh.assign(n * d, 0);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<double> l(w.rows);
    for (int64_t v = 0; v < w.rows; ++v) {
      for (int64_t i = 0; i < d; ++i) l[v] += double(rows[v * d + i]) * h[t * d + i];
    }
    const double m = *std::max_element(l.begin(), l.end());
    double s = 0;
    for (double x : l) s += std::exp(x - m);
    const double lse = m + std::log(s);
    nll[t] = lse - l[y[t]];
    for (int64_t v = 0; v < w.rows; ++v) {
      const double c = grad[t] * (std::exp(l[v] - lse) - (v == y[t]));
      for (int64_t i = 0; i < d; ++i) dh[t * d + i] += c * rows[v * d + i];
    }
  }
}

struct Problem {
  StoredMatrix w;
  std::vector<float> h, grad;
  std::vector<int32_t> y;
};

Problem make_problem(TensorType type, int64_t vocab, int64_t d, int64_t n, uint64_t seed) {
  Problem p{make_matrix(type, vocab, d, seed), testing::random_floats(n * d, seed + 1, 2.0f), {}, {}};
  for (int64_t t = 0; t < n; ++t) {
    p.y.push_back(static_cast<int32_t>((t * 7919 + seed) % vocab));
    p.grad.push_back(1.0f / static_cast<float>(n) * (t % 3 == 2 ? 0.0f : 1.0f));  // some left out
  }
  return p;
}

TEST(TiledLoss, EqualsTheDefinitionForFloatWeights) {
  ThreadPool pool(2);
  const Problem p = make_problem(TensorType::F32, 1000, 64, 9, 3);
  std::vector<double> want_nll, want_dh;
  reference(p.w.m, p.h, p.y, p.grad, want_nll, want_dh);
  std::vector<float> nll(9), lse(9), dh(9 * 64, 0.0f);
  tiled_cross_entropy(p.w.m, p.h.data(), 9, p.y.data(), nll.data(), lse.data(), pool, {.tile = 128});
  tiled_cross_entropy_backward(p.w.m, p.h.data(), 9, p.y.data(), lse.data(), p.grad.data(),
                               dh.data(), pool, {.tile = 128, .filter = 0});
  for (int t = 0; t < 9; ++t) EXPECT_NEAR(nll[t], want_nll[t], 1e-4 * (1 + want_nll[t]));
  for (size_t i = 0; i < dh.size(); ++i) EXPECT_NEAR(dh[i], want_dh[i], 2e-5) << i;
  EXPECT_GT(*std::max_element(nll.begin(), nll.end()), 1.0);  // not a trivial loss
}

TEST(TiledLoss, QuantizedWeightsMatchTheFullLogitsAtEveryTileSize) {
  ThreadPool pool(2);
  for (TensorType type : {TensorType::Q8_0, TensorType::Q4_K, TensorType::Q6_K}) {
    SCOPED_TRACE(type_name(type));
    const int64_t n = 6, d = 256, vocab = 777;
    const Problem p = make_problem(type, vocab, d, n, 5);
    std::vector<float> full_nll(n), full_dh(n * d, 0.0f);
    naive_cross_entropy(p.w.m, p.h.data(), n, p.y.data(), p.grad.data(), full_nll.data(),
                        full_dh.data(), pool);
    // Against the definition: the kernels quantize the hidden states to 8 bits.
    std::vector<double> want_nll, want_dh;
    reference(p.w.m, p.h, p.y, p.grad, want_nll, want_dh);
    for (int64_t t = 0; t < n; ++t) EXPECT_NEAR(full_nll[t], want_nll[t], 0.05 * (1 + want_nll[t]));
    for (int64_t tile : {1, 7, 256, 777, 5000}) {
      std::vector<float> nll(n), lse(n), dh(n * d, 0.0f);
      tiled_cross_entropy(p.w.m, p.h.data(), n, p.y.data(), nll.data(), lse.data(), pool, {.tile = tile});
      tiled_cross_entropy_backward(p.w.m, p.h.data(), n, p.y.data(), lse.data(), p.grad.data(),
                                   dh.data(), pool, {.tile = tile, .filter = 0});
      for (int64_t t = 0; t < n; ++t) EXPECT_NEAR(nll[t], full_nll[t], 1e-4) << "tile " << tile;
      for (size_t i = 0; i < dh.size(); ++i) ASSERT_NEAR(dh[i], full_dh[i], 1e-5) << "tile " << tile;
    }
  }
}

TEST(TiledLoss, GradientMatchesFiniteDifferences) {
  ThreadPool pool(1);
  const int64_t n = 3, d = 32;
  Problem p = make_problem(TensorType::F32, 300, d, n, 8);
  p.grad.assign(n, 1.0f);
  std::vector<float> nll(n), lse(n), dh(n * d, 0.0f);
  tiled_cross_entropy(p.w.m, p.h.data(), n, p.y.data(), nll.data(), lse.data(), pool, {.tile = 64});
  tiled_cross_entropy_backward(p.w.m, p.h.data(), n, p.y.data(), lse.data(), p.grad.data(), dh.data(),
                               pool, {.tile = 64, .filter = 0});
  auto total = [&](const std::vector<float>& h) {
    std::vector<float> l(n), s(n);
    tiled_cross_entropy(p.w.m, h.data(), n, p.y.data(), l.data(), s.data(), pool, {.tile = 64});
    return double{l[0]} + l[1] + l[2];
  };
  const float eps = 1e-2f;
  for (int64_t i = 0; i < n * d; i += 5) {
    std::vector<float> plus = p.h, minus = p.h;
    plus[i] += eps;
    minus[i] -= eps;
    const double fd = (total(plus) - total(minus)) / (2 * eps);
    EXPECT_NEAR(dh[i], fd, 2e-3 * (1 + std::abs(fd))) << i;
  }
}

TEST(TiledLoss, TheFilterSkipsMostRowsOfAPeakedSoftmaxAndKeepsTheGradient) {
  ThreadPool pool(2);
  const int64_t n = 4, d = 64, vocab = 4000;
  Problem p = make_problem(TensorType::Q8_0, vocab, d, n, 13);
  for (float& x : p.h) x *= 4;  // large logits: a peaked softmax, as a trained model has
  std::vector<float> nll(n), lse(n), exact(n * d, 0.0f), filtered(n * d, 0.0f);
  tiled_cross_entropy(p.w.m, p.h.data(), n, p.y.data(), nll.data(), lse.data(), pool);
  tiled_cross_entropy_backward(p.w.m, p.h.data(), n, p.y.data(), lse.data(), p.grad.data(),
                               exact.data(), pool, {.filter = 0});
  TiledLossStats stats;
  tiled_cross_entropy_backward(p.w.m, p.h.data(), n, p.y.data(), lse.data(), p.grad.data(),
                               filtered.data(), pool, {.filter = 1.0f / 4096}, &stats);
  EXPECT_GT(stats.rows_skipped, 9 * stats.rows_computed) << stats.rows_computed;
  double err = 0, norm = 0;
  for (size_t i = 0; i < exact.size(); ++i) {
    err += (exact[i] - filtered[i]) * (exact[i] - filtered[i]);
    norm += exact[i] * exact[i];
  }
  EXPECT_LT(std::sqrt(err / norm), 0.01);
}

TEST(TiledLoss, ScratchIsAFractionOfTheLogitsMatrix) {
  // Gemma 3's output matrix: 262,144 x 640, 256 tokens.
  const Matrix gemma{TensorType::Q8_0, nullptr, 262144, 640, row_bytes(TensorType::Q8_0, 640)};
  const uint64_t logits = 256ull * 262144 * sizeof(float);
  EXPECT_LT(tiled_loss_scratch_bytes(gemma, 256, {}), logits / 50);
}

TEST(TiledLoss, ATargetOutsideTheVocabularyIsAnError) {
  ThreadPool pool(1);
  Problem p = make_problem(TensorType::F32, 50, 32, 2, 1);
  p.y[1] = 50;
  std::vector<float> nll(2), lse(2);
  EXPECT_THROW(tiled_cross_entropy(p.w.m, p.h.data(), 2, p.y.data(), nll.data(), lse.data(), pool),
               Error);
}

}  // namespace
}  // namespace flashlm
