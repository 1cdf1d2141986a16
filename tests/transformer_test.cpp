// The dense forward pass against a naive one written straight from the math, on small
// synthetic models; and batched prompt processing against token-by-token decoding.
#include "model/transformer.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "common/thread_pool.h"
#include "engine/generate.h"
#include "gguf/gguf.h"
#include "model/feed_forward.h"
#include "quant/reference.h"
#include "sampling/sampler.h"
#include "tokenizer/tokenizer.h"
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

// The values a KV cache of `type` gives back for `v`: stored and read again.
std::vector<float> stored(TensorType type, const std::vector<float>& v) {
  std::vector<uint8_t> bytes(row_bytes(type, std::ssize(v)));
  std::vector<float> out(v.size());
  quantize_row_reference(type, v.data(), bytes.data(), std::ssize(v));
  dequantize_row_reference(type, bytes.data(), out.data(), std::ssize(v));
  return out;
}

// Logits of every position of `tokens`, computed one token at a time from the definition, with
// keys and values kept as a cache of `cache_type` would keep them.
std::vector<std::vector<float>> naive_forward(const ModelConfig& c, const ModelWeights& w,
                                              const std::vector<int32_t>& tokens,
                                              TensorType cache_type = TensorType::F32) {
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
      keys[l].push_back(stored(cache_type, k));
      values[l].push_back(stored(cache_type, v));
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
  Transformer tr(m.config, m.weights, ffn, pool,
                 {.context_size = 64,
                  .max_batch = 16,
                  .kv_type_k = TensorType::F32,
                  .kv_type_v = TensorType::F32});
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

// The KV cache in F16 or Q8_0, on a model whose head_dim (32) is a whole Q8_0 block.
class KvCacheTypes : public ::testing::TestWithParam<TensorType> {};

TEST_P(KvCacheTypes, LogitsMatchTheDefinitionWithTheCacheRounded) {
  const TensorType type = GetParam();
  Loaded m = load_tiny({.n_heads = 2, .n_kv_heads = 1}, "tiny-hd32.gguf");
  ASSERT_EQ(m.config.head_dim, 32);
  const auto rounded = naive_forward(m.config, m.weights, kTokens, type);
  const auto exact = naive_forward(m.config, m.weights, kTokens);
  ThreadPool pool(2);
  DenseFeedForward ffn(m.config, m.weights, pool);
  Transformer tr(m.config, m.weights, ffn, pool,
                 {.context_size = 64, .max_batch = 16, .kv_type_k = type, .kv_type_v = type});
  // Against the definition with the same rounded keys and values, what is left is the kernels'
  // summation order (F16: as F32's tolerance) and, for Q8_0 keys, the query quantized to 8 bits
  // per block like every activation of a quantized weight (TransformerVsNaive's 3e-2).
  const double tolerance = type == TensorType::F16 ? 2e-4 : 3e-2;
  // Against the exact definition the rounding shows: 11 significant bits (F16) move logits of
  // magnitude ~2 by ~1e-3 at most; 8 bits per block (Q8_0) by ~1e-2 (measured: 6.7e-4, 1.3e-2).
  const double cost = type == TensorType::F16 ? 2e-3 : 5e-2;
  for (size_t i = 0; i < kTokens.size(); ++i) {
    auto logits = tr.forward(std::span(&kTokens[i], 1));
    EXPECT_LT(max_abs_diff(logits, rounded[i]), tolerance) << "position " << i;
    EXPECT_LT(max_abs_diff(logits, exact[i]), cost) << "position " << i;
  }
}

std::string cache_type_name(const ::testing::TestParamInfo<TensorType>& info) {
  return type_name(info.param);
}

INSTANTIATE_TEST_SUITE_P(Types, KvCacheTypes, ::testing::Values(TensorType::F16, TensorType::Q8_0),
                         cache_type_name);

TEST(Transformer, KvCacheTypesByNameAndSize) {
  EXPECT_EQ(parse_kv_cache_type("f32"), TensorType::F32);
  EXPECT_EQ(parse_kv_cache_type("f16"), TensorType::F16);
  EXPECT_EQ(parse_kv_cache_type("q8_0"), TensorType::Q8_0);
  try {
    parse_kv_cache_type("q4_0");
    FAIL() << "q4_0 is not a KV cache type";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f32, f16 and q8_0"), std::string::npos) << e.what();
  }
  Loaded m = load_tiny({.n_heads = 2, .n_kv_heads = 1}, "tiny-sizes.gguf");
  ThreadPool pool(1);
  DenseFeedForward ffn(m.config, m.weights, pool);
  // 2 layers x 40 positions x 32 values, keys and values: F32 4 bytes each, F16 2, Q8_0 34/32.
  const uint64_t values = 2 * 2 * 40 * 32;
  for (const auto& [type, bytes] : {std::pair{TensorType::F32, values * 4},
                                    std::pair{TensorType::F16, values * 2},
                                    std::pair{TensorType::Q8_0, values / 32 * 34}}) {
    Transformer tr(m.config, m.weights, ffn, pool,
                   {.context_size = 40, .kv_type_k = type, .kv_type_v = type});
    EXPECT_EQ(tr.kv_cache_bytes(), bytes) << type_name(type);
    EXPECT_EQ(Transformer::kv_cache_bytes(m.config, 40, type, type), bytes) << type_name(type);
  }
  EXPECT_EQ(Transformer::kv_cache_bytes(m.config, 40, TensorType::Q8_0, TensorType::F32),
            values / 2 / 32 * 34 + values / 2 * 4);
}

TEST(Transformer, RefusesACacheTypeTheHeadsDoNotDivideInto) {
  Loaded m = load_tiny({}, "tiny-hd16.gguf");  // head_dim 16: half a Q8_0 block
  ASSERT_EQ(m.config.head_dim, 16);
  ThreadPool pool(1);
  DenseFeedForward ffn(m.config, m.weights, pool);
  for (const TransformerOptions& options :
       {TransformerOptions{.kv_type_k = TensorType::Q8_0},
        TransformerOptions{.kv_type_v = TensorType::Q8_0},
        TransformerOptions{.kv_type_k = TensorType::Q4_0}}) {
    try {
      Transformer tr(m.config, m.weights, ffn, pool, options);
      FAIL() << "must be refused: Q8_0 with head_dim 16, or Q4_0 at all";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--cache-type-"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(Transformer::kv_cache_bytes(m.config, 8, TensorType::Q8_0, TensorType::F16), Error);
}

TEST(Transformer, EveryTokensLogitsOnlyWhenBuiltForThem) {
  Loaded m = load_tiny({}, "tiny-logits.gguf");
  ThreadPool pool(1);
  DenseFeedForward ffn(m.config, m.weights, pool);
  Transformer last_only(m.config, m.weights, ffn, pool, {.context_size = 32, .max_batch = 16});
  try {
    last_only.forward(kTokens, true);
    FAIL() << "all logits from a Transformer built without all_logits";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("all_logits"), std::string::npos) << e.what();
  }
  Transformer all(m.config, m.weights, ffn, pool,
                  {.context_size = 32, .max_batch = 16, .all_logits = true});
  const auto every = all.forward(kTokens, true);
  ASSERT_EQ(every.size(), kTokens.size() * m.config.vocab_size);
  last_only.truncate(0);
  const auto last = last_only.forward(kTokens);
  EXPECT_EQ(max_abs_diff(every.subspan((kTokens.size() - 1) * m.config.vocab_size),
                         std::vector<float>(last.begin(), last.end())),
            0.0);
  // The logits rows are the whole difference between the two in memory.
  const TransformerOptions one_row{.context_size = 32, .max_batch = 16};
  TransformerOptions all_rows = one_row;
  all_rows.all_logits = true;
  EXPECT_EQ(Transformer::scratch_bytes(m.config, all_rows, 2) -
                Transformer::scratch_bytes(m.config, one_row, 2),
            15ull * m.config.vocab_size * sizeof(float));
}

// Every weight type: the batched matmul kernels (register tiles of rows x tokens) must compute
// what the one-token matvec kernels compute, at every position of every batch.
class BatchedVsSingle : public ::testing::TestWithParam<TensorType> {};

// A tiny model whose matrices are all of `type` (wide enough for a K-quant's 256 values).
Loaded load_tiny_of_type(TensorType type, const std::string& prefix) {
  const bool k_quant = type_traits(type).block_size == 256;
  const TinyModelSpec spec{.d_model = k_quant ? 256 : 64, .d_ff = k_quant ? 512 : 128,
                           .weight_type = type};
  return load_tiny(spec, prefix + type_name(type) + ".gguf");
}

TEST_P(BatchedVsSingle, PromptEqualsTokenByToken) {
  const TensorType type = GetParam();
  Loaded m = load_tiny_of_type(type, "tiny-batched-");
  ThreadPool pool(2);
  DenseFeedForward ffn(m.config, m.weights, pool);
  Transformer batched(m.config, m.weights, ffn, pool,
                      {.context_size = 64, .max_batch = 5, .all_logits = true});
  Transformer single(m.config, m.weights, ffn, pool, {.context_size = 64, .max_batch = 1});
  std::vector<float> every;  // batches of 5 + 5 + 2, every position's logits
  for (size_t b = 0; b < kTokens.size(); b += 5) {
    const auto part = batched.forward(
        std::span(kTokens).subspan(b, std::min<size_t>(5, kTokens.size() - b)), true);
    every.insert(every.end(), part.begin(), part.end());
  }
  const size_t vocab = static_cast<size_t>(m.config.vocab_size);
  for (size_t i = 0; i < kTokens.size(); ++i) {
    const auto one = single.forward(std::span(&kTokens[i], 1));
    double scale = 0;
    for (float v : one) scale = std::max(scale, std::abs(double{v}));
    const std::vector<float> row(every.begin() + i * vocab, every.begin() + (i + 1) * vocab);
    EXPECT_LT(max_abs_diff(one, row), 1e-5 * std::max(1.0, scale)) << "token " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Types, BatchedVsSingle,
                         ::testing::Values(TensorType::F32, TensorType::F16, TensorType::Q4_0,
                                           TensorType::Q4_1, TensorType::Q5_0, TensorType::Q5_1,
                                           TensorType::Q8_0, TensorType::Q4_K, TensorType::Q5_K,
                                           TensorType::Q6_K),
                         [](const auto& p) { return std::string(type_name(p.param)); });

// Several sequences advanced by one pass, each with its own KV cache (the server's --parallel):
// prompts of different lengths in the first pass, then a token each per pass, and every
// sequence's logits are bit for bit those of a pass over that sequence alone.
TEST_P(BatchedVsSingle, SequencesOfOnePassEqualEachAlone) {
  const TensorType type = GetParam();
  Loaded m = load_tiny_of_type(type, "tiny-sequences-");
  ThreadPool pool(2);
  DenseFeedForward ffn(m.config, m.weights, pool);
  const TransformerOptions options{.context_size = 32, .max_batch = 16, .sequences = 3};
  Transformer together(m.config, m.weights, ffn, pool, options);
  KvCache second(m.config, 32, options.kv_type_k, options.kv_type_v);
  KvCache third(m.config, 32, options.kv_type_k, options.kv_type_v);
  KvCache* caches[3] = {&together.kv_cache(), &second, &third};
  const std::vector<std::vector<int32_t>> prompts = {
      {72, 101, 108, 108, 111}, {119, 111, 114}, {33}};
  const std::vector<std::vector<int32_t>> continuations = {
      {1, 2, 3, 4}, {200, 201, 202, 203}, {9, 8, 7, 6}};
  const size_t vocab = static_cast<size_t>(m.config.vocab_size);
  std::vector<std::vector<std::vector<float>>> got(3);  // [sequence][pass] last-token logits
  for (size_t pass = 0; pass <= continuations[0].size(); ++pass) {
    std::vector<SequenceStep> steps;
    for (size_t s = 0; s < 3; ++s) {
      steps.push_back({caches[s], pass == 0 ? std::span<const int32_t>(prompts[s])
                                            : std::span(&continuations[s][pass - 1], 1)});
    }
    const auto logits = together.forward(steps);
    ASSERT_EQ(logits.size(), 3 * vocab);
    for (size_t s = 0; s < 3; ++s) {
      got[s].emplace_back(logits.begin() + s * vocab, logits.begin() + (s + 1) * vocab);
    }
  }
  for (size_t s = 0; s < 3; ++s) {
    Transformer alone(m.config, m.weights, ffn, pool, {.context_size = 32, .max_batch = 16});
    auto expected = alone.forward(prompts[s]);
    EXPECT_EQ(max_abs_diff(expected, got[s][0]), 0.0) << "sequence " << s << " prompt";
    for (size_t pass = 1; pass <= continuations[s].size(); ++pass) {
      expected = alone.forward(std::span(&continuations[s][pass - 1], 1));
      EXPECT_EQ(max_abs_diff(expected, got[s][pass]), 0.0) << "sequence " << s << " pass " << pass;
    }
    EXPECT_EQ(caches[s]->size(), alone.n_past());
  }
}

// A KV cache rolled back to any position and continued differently gives exactly the logits
// of a fresh run over the same tokens (what rejected drafts and reused prompts rely on).
TEST(Transformer, RollbackThenAnotherContinuationEqualsAFreshRun) {
  Loaded m = load_tiny({.weight_type = TensorType::Q8_0}, "tiny-rollback.gguf");
  ThreadPool pool(2);
  DenseFeedForward ffn(m.config, m.weights, pool);
  const TransformerOptions options{.context_size = 32, .max_batch = 4};
  Transformer tr(m.config, m.weights, ffn, pool, options);
  const std::vector<int32_t> other = {5, 6, 7, 250, 251};
  for (int at : {0, 1, 7, 11}) {
    tr.truncate(0);
    tr.forward(kTokens);
    tr.truncate(at);
    ASSERT_EQ(tr.n_past(), at);
    const auto rolled = tr.forward(other);
    const std::vector<float> got(rolled.begin(), rolled.end());
    std::vector<int32_t> tokens(kTokens.begin(), kTokens.begin() + at);
    tokens.insert(tokens.end(), other.begin(), other.end());
    Transformer fresh(m.config, m.weights, ffn, pool, options);
    if (at > 0) fresh.forward(std::span(tokens).first(at));  // the rolled-back run's batches
    EXPECT_EQ(max_abs_diff(fresh.forward(other), got), 0.0) << "rolled back to " << at;
  }
}

// A draft tree in one pass: each token's logits are those of a fresh run of the prompt and its
// path through the tree, bit for bit (also across Gemma 3's sliding window of 4), and after
// keeping one path the cache continues as if that path had been fed alone.
TEST(Transformer, TreePassEqualsEachPathAlone) {
  for (const std::string arch : {"llama", "gemma3"}) {
    Loaded m = load_tiny({.architecture = arch, .weight_type = TensorType::Q8_0},
                         "tiny-tree-" + arch + ".gguf");
    ThreadPool pool(2);
    DenseFeedForward ffn(m.config, m.weights, pool);
    const TransformerOptions options{.context_size = 32, .max_batch = 8, .all_logits = true};
    Transformer tr(m.config, m.weights, ffn, pool, options);
    const std::vector<int32_t> prompt(kTokens.begin(), kTokens.begin() + 6);
    // root 40; 41 and 42 after it, 43 after 41, 44 after 43, 45 after 42.
    const std::vector<int32_t> tree = {40, 41, 42, 43, 44, 45};
    const std::vector<int32_t> parents = {-1, 0, 0, 1, 3, 2};
    const auto path_of = [&](int node) {
      std::vector<int32_t> path;
      for (int i = node; i >= 0; i = parents[i]) path.insert(path.begin(), tree[i]);
      return path;
    };
    const auto fresh_logits = [&](const std::vector<int32_t>& path) {
      Transformer fresh(m.config, m.weights, ffn, pool, options);
      fresh.forward(prompt);
      std::vector<float> last;
      for (int32_t t : path) {
        const auto l = fresh.forward(std::span(&t, 1));
        last.assign(l.begin(), l.end());
      }
      return last;
    };
    tr.forward(prompt);
    const auto all = tr.forward_tree(tree, parents);
    const size_t vocab = m.config.vocab_size;
    ASSERT_EQ(all.size(), tree.size() * vocab);
    const std::vector<float> logits(all.begin(), all.end());
    for (int node = 0; node < static_cast<int>(tree.size()); ++node) {
      EXPECT_EQ(max_abs_diff(std::span(logits).subspan(node * vocab, vocab),
                             fresh_logits(path_of(node))),
                0.0)
          << arch << " node " << node;
    }
    // Keep the path 40 41 43 (rows 6, 7, 9), then feed 44: as a fresh run of 40 41 43 44.
    const std::vector<int> rows = {6, 7, 9};
    tr.kv_cache().keep_path(6, rows);
    ASSERT_EQ(tr.n_past(), 9);
    const int32_t next = 44;
    EXPECT_EQ(max_abs_diff(tr.forward(std::span(&next, 1)), fresh_logits({40, 41, 43, 44})), 0.0)
        << arch;
    // A path that is not ascending within the cache is refused.
    EXPECT_THROW(tr.kv_cache().keep_path(6, std::vector<int>{8, 7}), Error);
  }
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

// A request abandoned mid-prompt (a server told to stop) stops between batches, keeps the
// batches it processed, and a later pass over the rest gives the logits of an uncut run.
TEST(Generate, CancelledBetweenPromptBatchesKeepsWhatItProcessed) {
  Loaded m = load_tiny({}, "tiny-cancel.gguf");
  const Tokenizer tokenizer = Tokenizer::from_gguf(*m.file);
  ThreadPool pool(1);
  DenseFeedForward ffn(m.config, m.weights, pool);
  Transformer tr(m.config, m.weights, ffn, pool, {.context_size = 32, .max_batch = 5});
  Sampler greedy({});
  int asked = 0;
  int tokens = 0;
  const GenerationStats stats =
      generate(tr, greedy, tokenizer, kTokens, 4, [&](int32_t) { return ++tokens, true; },
               [&] { return ++asked > 2; });  // yes before the third batch (tokens 10-11)
  EXPECT_TRUE(stats.cancelled);
  EXPECT_EQ(asked, 3);
  EXPECT_EQ(tokens, 0);
  EXPECT_EQ(tr.n_past(), 10);
  const auto rest = tr.forward(std::span(kTokens).subspan(10));
  const std::vector<float> resumed(rest.begin(), rest.end());
  Transformer uncut(m.config, m.weights, ffn, pool, {.context_size = 32, .max_batch = 5});
  EXPECT_EQ(max_abs_diff(uncut.forward(kTokens), resumed), 0.0);
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
