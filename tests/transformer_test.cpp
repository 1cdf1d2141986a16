// The dense forward pass against a naive one written straight from the math, on small
// synthetic models; and batched prompt processing against token-by-token decoding.
#include "model/transformer.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "common/thread_pool.h"
#include "gguf/gguf.h"
#include "model/feed_forward.h"
#include "quant/reference.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

using testing::TinyModelSpec;

std::vector<float> dequantize(const Matrix& m) {
  std::vector<float> out(static_cast<size_t>(m.rows) * m.cols);
  for (int64_t r = 0; r < m.rows; ++r) {
    dequantize_row_reference(m.type, m.row(r), out.data() + r * m.cols, m.cols);
  }
  return out;
}

std::vector<float> matvec(const Matrix& m, const std::vector<float>& x) {
  const std::vector<float> w = dequantize(m);
  std::vector<float> y(m.rows, 0.f);
  for (int64_t r = 0; r < m.rows; ++r) {
    double sum = 0;
    for (int64_t c = 0; c < m.cols; ++c) sum += double{w[r * m.cols + c]} * x[c];
    y[r] = static_cast<float>(sum);
  }
  return y;
}

std::vector<float> norm(const std::vector<float>& x, const Vector& w, float eps) {
  double ss = 0;
  for (float v : x) ss += double{v} * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = static_cast<float>(x[i] * inv * w.data[i]);
  return y;
}

void rope(std::vector<float>& v, int heads, int hd, int pos, float base, RopeStyle style) {
  for (int h = 0; h < heads; ++h) {
    for (int i = 0; i < hd / 2; ++i) {
      const double theta = pos * std::pow(double{base}, -2.0 * i / hd);
      const int a = h * hd + (style == RopeStyle::Adjacent ? 2 * i : i);
      const int b = h * hd + (style == RopeStyle::Adjacent ? 2 * i + 1 : i + hd / 2);
      const double x0 = v[a], x1 = v[b];
      v[a] = static_cast<float>(x0 * std::cos(theta) - x1 * std::sin(theta));
      v[b] = static_cast<float>(x0 * std::sin(theta) + x1 * std::cos(theta));
    }
  }
}

void add(std::vector<float>& v, const Vector& b) {
  if (b) for (size_t i = 0; i < v.size(); ++i) v[i] += b.data[i];
}

// Logits of every position of `tokens`, computed one token at a time from the definition.
std::vector<std::vector<float>> naive_forward(const ModelConfig& c, const ModelWeights& w,
                                              const std::vector<int32_t>& tokens) {
  const int hd = c.head_dim;
  std::vector<std::vector<std::vector<float>>> keys(c.n_layers), values(c.n_layers);
  std::vector<std::vector<float>> all_logits;
  const std::vector<float> embedding = dequantize(w.token_embedding);
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    std::vector<float> x(embedding.begin() + tokens[pos] * c.d_model,
                         embedding.begin() + (tokens[pos] + 1) * c.d_model);
    for (int l = 0; l < c.n_layers; ++l) {
      const LayerWeights& L = w.layers[l];
      const auto xn = norm(x, L.attn_norm, c.rms_eps);
      auto q = matvec(L.wq, xn), k = matvec(L.wk, xn), v = matvec(L.wv, xn);
      add(q, L.bq);
      add(k, L.bk);
      add(v, L.bv);
      rope(q, c.n_heads, hd, static_cast<int>(pos), c.rope_base, c.rope_style);
      rope(k, c.n_kv_heads, hd, static_cast<int>(pos), c.rope_base, c.rope_style);
      keys[l].push_back(k);
      values[l].push_back(v);
      std::vector<float> attn(c.q_dim(), 0.f);
      for (int h = 0; h < c.n_heads; ++h) {
        const int kvh = h / (c.n_heads / c.n_kv_heads);
        std::vector<double> s(pos + 1);
        double max = -1e30, total = 0;
        for (size_t p = 0; p <= pos; ++p) {
          double dot = 0;
          for (int i = 0; i < hd; ++i) dot += double{q[h * hd + i]} * keys[l][p][kvh * hd + i];
          s[p] = dot / std::sqrt(double(hd));
          max = std::max(max, s[p]);
        }
        for (double& e : s) total += (e = std::exp(e - max));
        for (size_t p = 0; p <= pos; ++p) {
          for (int i = 0; i < hd; ++i) attn[h * hd + i] += s[p] / total * values[l][p][kvh * hd + i];
        }
      }
      const auto o = matvec(L.wo, attn);
      for (int i = 0; i < c.d_model; ++i) x[i] += o[i];
      const auto hn = norm(x, L.ffn_norm, c.rms_eps);
      const auto g = matvec(L.ffn_gate, hn), u = matvec(L.ffn_up, hn);
      std::vector<float> act(c.d_ff);
      for (int i = 0; i < c.d_ff; ++i) act[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      const auto d = matvec(L.ffn_down, act);
      for (int i = 0; i < c.d_model; ++i) x[i] += d[i];
    }
    all_logits.push_back(matvec(w.output, norm(x, w.output_norm, c.rms_eps)));
  }
  return all_logits;
}

struct Loaded {
  std::unique_ptr<GgufFile> file;
  ModelConfig config;
  ModelWeights weights;
};

Loaded load_tiny(const TinyModelSpec& spec, const std::string& name) {
  const std::string path = testing::temp_path(name);
  testing::write_tiny_model(path, spec);
  Loaded m;
  m.file = GgufFile::open(path);
  m.config = ModelConfig::from_gguf(*m.file);
  m.weights = ModelWeights::from_gguf(*m.file, m.config);
  return m;
}

double max_abs_diff(std::span<const float> a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < b.size(); ++i) d = std::max(d, std::abs(double{a[i]} - b[i]));
  return d;
}

const std::vector<int32_t> kTokens = {72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100};

class TransformerVsNaive : public ::testing::TestWithParam<std::tuple<std::string, TensorType>> {};

TEST_P(TransformerVsNaive, LogitsMatchTheDefinition) {
  TinyModelSpec spec;
  spec.architecture = std::get<0>(GetParam());
  spec.weight_type = std::get<1>(GetParam());
  Loaded m = load_tiny(spec, "tiny.gguf");
  const auto expected = naive_forward(m.config, m.weights, kTokens);

  ThreadPool pool(2);
  DenseFeedForward ffn(m.config, m.weights, pool);
  Transformer tr(m.config, m.weights, ffn, pool, {.context_size = 64, .max_batch = 16});
  // The activations are quantized to 8 bits for quantized weights, F32 for F32 weights.
  const double tolerance = spec.weight_type == TensorType::F32 ? 2e-4 : 3e-2;
  for (size_t i = 0; i < kTokens.size(); ++i) {
    auto logits = tr.forward(std::span(&kTokens[i], 1));
    EXPECT_LT(max_abs_diff(logits, expected[i]), tolerance) << "position " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Architectures, TransformerVsNaive,
    ::testing::Values(std::make_tuple("llama", TensorType::F32),
                      std::make_tuple("qwen2", TensorType::F32),
                      std::make_tuple("llama", TensorType::Q8_0),
                      std::make_tuple("llama", TensorType::Q4_1)));

TEST(Transformer, BatchedPromptEqualsTokenByToken) {
  Loaded m = load_tiny({.weight_type = TensorType::Q8_0}, "tiny-q8.gguf");
  ThreadPool pool(2);
  DenseFeedForward ffn(m.config, m.weights, pool);
  Transformer batched(m.config, m.weights, ffn, pool, {.context_size = 64, .max_batch = 5});
  Transformer single(m.config, m.weights, ffn, pool, {.context_size = 64, .max_batch = 1});
  auto all = batched.forward(kTokens);  // crosses batch boundaries (5 + 5 + 2)
  std::vector<float> last(all.begin(), all.end());
  std::span<const float> one;
  for (int32_t t : kTokens) one = single.forward(std::span(&t, 1));
  EXPECT_LT(max_abs_diff(one, last), 1e-4);
}

TEST(Transformer, TruncateReplaysIdentically) {
  Loaded m = load_tiny({}, "tiny-f32.gguf");
  ThreadPool pool(1);
  DenseFeedForward ffn(m.config, m.weights, pool);
  Transformer tr(m.config, m.weights, ffn, pool, {.context_size = 32, .max_batch = 8});
  auto first = tr.forward(kTokens);
  std::vector<float> expected(first.begin(), first.end());
  tr.truncate(0);
  auto again = tr.forward(kTokens);
  EXPECT_EQ(max_abs_diff(again, expected), 0.0);
}

TEST(Transformer, RejectsOverflowingContextAndBadTokens) {
  Loaded m = load_tiny({}, "tiny-ctx.gguf");
  ThreadPool pool(1);
  DenseFeedForward ffn(m.config, m.weights, pool);
  Transformer tr(m.config, m.weights, ffn, pool, {.context_size = 8, .max_batch = 8});
  EXPECT_THROW(tr.forward(kTokens), Error);
  const int32_t bad[1] = {testing::kTinyVocab};
  EXPECT_THROW(tr.forward(bad), Error);
}

}  // namespace
}  // namespace flashlm
