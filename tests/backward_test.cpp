// The backward passes of fine-tuning against finite differences: each op alone, then the
// gradient of a whole tiny model's loss with respect to every LoRA matrix (llama, qwen2 and
// gemma3 layouts). tests/data/reference/backward_torch.json adds PyTorch autograd's figures.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "common/thread_pool.h"
#include "flash/loaded_model.h"
#include "ops/ops.h"
#include "quant/kernels.h"
#include "support/lora_pattern.h"
#include "support/test_model.h"
#include "train/backward.h"
#include "train/lora_trainer.h"

namespace flashlm {
namespace {

// Central differences of f at x along each coordinate i in `which`, against grad[i].
void expect_gradient(const std::function<double(const std::vector<float>&)>& f,
                     std::vector<float> x, const std::vector<float>& grad, double eps,
                     double tolerance, int stride = 1) {
  ASSERT_EQ(x.size(), grad.size());
  double worst = 0;
  for (size_t i = 0; i < x.size(); i += stride) {
    const float saved = x[i];
    x[i] = saved + static_cast<float>(eps);
    const double up = f(x);
    x[i] = saved - static_cast<float>(eps);
    const double down = f(x);
    x[i] = saved;
    const double fd = (up - down) / (2 * eps);
    worst = std::max(worst, std::abs(fd - grad[i]) / (1 + std::abs(fd)));
    EXPECT_NEAR(grad[i], fd, tolerance * (1 + std::abs(fd))) << "coordinate " << i;
  }
  std::printf("worst relative difference to finite differences: %.2e\n", worst);
}

// A fixed random projection of an output, so each op's gradient is one of a scalar.
double project(const std::vector<float>& y, uint64_t seed) {
  const std::vector<float> r = testing::random_floats(y.size(), seed);
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += double(r[i]) * y[i];
  return s;
}

TEST(Backward, RmsNorm) {
  const int64_t rows = 3, n = 16;
  const std::vector<float> x0 = testing::random_floats(rows * n, 1, 2.0f);
  const std::vector<float> w = testing::random_floats(n, 2, 1.5f);
  const std::vector<float> dy = testing::random_floats(rows * n, 3);
  auto f = [&](const std::vector<float>& x) {
    std::vector<float> y(x.size());
    rms_norm(x.data(), w.data(), y.data(), rows, n, 1e-5f);
    return project(y, 3);
  };
  std::vector<float> dx(rows * n, 0.0f);
  rms_norm_backward(x0.data(), w.data(), dy.data(), dx.data(), rows, n, 1e-5f);
  expect_gradient(f, x0, dx, 1e-3, 2e-3);
}

TEST(Backward, RopeBothStyles) {
  for (RopeStyle style : {RopeStyle::Adjacent, RopeStyle::Halves}) {
    const std::vector<float> x0 = testing::random_floats(2 * 16, 4);
    const std::vector<float> dy = testing::random_floats(2 * 16, 5);
    auto f = [&](const std::vector<float>& x) {
      std::vector<float> y = x;
      apply_rope(y.data(), 2, 16, 12, style, 7, 10000.0f, 1.0f);
      return project(y, 5);
    };
    std::vector<float> dx = dy;
    rope_backward(dx.data(), 2, 16, 12, style, 7, 10000.0f, 1.0f);
    expect_gradient(f, x0, dx, 1e-3, 1e-3);
  }
}

TEST(Backward, GatedActivations) {
  for (Activation act : {Activation::SiLU, Activation::GELU}) {
    for (bool gated : {true, false}) {
      const int64_t n = 40;
      const std::vector<float> g0 = testing::random_floats(n, 6, 3.0f), u0 = testing::random_floats(n, 7, 3.0f);
      const std::vector<float> dy = testing::random_floats(n, 8);
      std::vector<float> dg(n, 0.0f), du(n, 0.0f);
      gated_activation_backward(act, gated ? g0.data() : nullptr, u0.data(), dy.data(), dg.data(),
                                du.data(), n);
      auto fu = [&](const std::vector<float>& u) {
        std::vector<float> h(n);
        gated_activation(act, gated ? g0.data() : nullptr, u.data(), h.data(), n);
        return project(h, 8);
      };
      expect_gradient(fu, u0, du, 1e-3, 2e-3);
      if (gated) {
        auto fg = [&](const std::vector<float>& g) {
          std::vector<float> h(n);
          gated_activation(act, g.data(), u0.data(), h.data(), n);
          return project(h, 8);
        };
        expect_gradient(fg, g0, dg, 1e-3, 2e-3);
      }
    }
  }
}

TEST(Backward, TransposedQuantizedProductEqualsItsScalarTwin) {
  ThreadPool pool(2);
  for (TensorType type : {TensorType::F32, TensorType::Q8_0, TensorType::Q4_1, TensorType::Q4_K,
                          TensorType::Q6_K}) {
    SCOPED_TRACE(type_name(type));
    const int64_t rows = 48, cols = 256, n = 5;
    const size_t rb = row_bytes(type, cols);
    std::vector<uint8_t> bytes(rb * rows);
    const std::vector<float> values = testing::random_floats(rows * cols, 9);
    for (int64_t r = 0; r < rows; ++r) quantize_row(type, values.data() + r * cols, bytes.data() + r * rb, cols);
    const Matrix w{type, bytes.data(), rows, cols, rb};
    const std::vector<float> dy = testing::random_floats(n * rows, 10);
    std::vector<float> dx(n * cols, 0.5f);  // accumulates onto what is there
    linear_backward_input(w, dy.data(), n, dx.data(), pool);
    std::vector<float> row(cols);
    for (int64_t t = 0; t < n; ++t) {
      std::vector<double> want(cols, 0.5);
      for (int64_t r = 0; r < rows; ++r) {
        dequantize_row(type, w.row(r), row.data(), cols);
        for (int64_t i = 0; i < cols; ++i) want[i] += double(dy[t * rows + r]) * row[i];
      }
      for (int64_t i = 0; i < cols; ++i) ASSERT_NEAR(dx[t * cols + i], want[i], 1e-4) << t << " " << i;
    }
  }
}

TEST(Backward, CausalGroupedAttention) {
  ThreadPool pool(2);
  const int64_t n = 6;
  const int heads = 4, kv_heads = 2, hd = 8;
  for (int window : {0, 3}) {
    SCOPED_TRACE(window);
    const std::vector<float> q0 = testing::random_floats(n * heads * hd, 11);
    const std::vector<float> k0 = testing::random_floats(n * kv_heads * hd, 12);
    const std::vector<float> v0 = testing::random_floats(n * kv_heads * hd, 13);
    const std::vector<float> dout = testing::random_floats(n * heads * hd, 14);
    auto run = [&](const std::vector<float>& q, const std::vector<float>& k,
                   const std::vector<float>& v) {
      std::vector<float> p(heads * n * n), o(n * heads * hd);
      attention_forward(q.data(), k.data(), v.data(), n, heads, kv_heads, hd, 0.35f, window,
                        p.data(), o.data(), pool);
      return project(o, 14);
    };
    std::vector<float> p(heads * n * n), o(n * heads * hd);
    attention_forward(q0.data(), k0.data(), v0.data(), n, heads, kv_heads, hd, 0.35f, window,
                      p.data(), o.data(), pool);
    std::vector<float> dq(q0.size(), 0.0f), dk(k0.size(), 0.0f), dv(v0.size(), 0.0f);
    attention_backward(q0.data(), k0.data(), v0.data(), p.data(), dout.data(), n, heads, kv_heads,
                       hd, 0.35f, dq.data(), dk.data(), dv.data(), pool);
    expect_gradient([&](const std::vector<float>& q) { return run(q, k0, v0); }, q0, dq, 1e-3, 2e-3);
    expect_gradient([&](const std::vector<float>& k) { return run(q0, k, v0); }, k0, dk, 1e-3, 2e-3);
    expect_gradient([&](const std::vector<float>& v) { return run(q0, k0, v); }, v0, dv, 1e-3, 2e-3);
  }
}

TEST(Backward, LoraPair) {
  LoraPair p;
  p.rank = 3;
  p.in = 20;
  p.out = 12;
  p.a = testing::random_floats(p.rank * p.in, 15);
  p.b = testing::random_floats(p.out * p.rank, 16);
  const int64_t n = 4;
  const float s = 0.7f;
  const std::vector<float> x0 = testing::random_floats(n * p.in, 17);
  const std::vector<float> dy = testing::random_floats(n * p.out, 18);
  std::vector<float> da(p.a.size(), 0.0f), db(p.b.size(), 0.0f), dx(x0.size(), 0.0f);
  lora_backward(p, s, x0.data(), dy.data(), n, da.data(), db.data(), dx.data());
  auto f = [&](const LoraPair& q, const std::vector<float>& x) {
    std::vector<float> y(n * p.out, 0.0f);
    LoraSet::apply_reference(q, s, x.data(), n, y.data());
    return project(y, 18);
  };
  expect_gradient([&](const std::vector<float>& a) { LoraPair q = p; q.a = a; return f(q, x0); }, p.a, da, 1e-3, 1e-3);
  expect_gradient([&](const std::vector<float>& b) { LoraPair q = p; q.b = b; return f(q, x0); }, p.b, db, 1e-3, 1e-3);
  expect_gradient([&](const std::vector<float>& x) { return f(p, x); }, x0, dx, 1e-3, 1e-3);
}

// The whole model: every LoRA matrix's gradient of the loss of a 12-token sequence.
TEST(Backward, WholeTinyModelLossGradient) {
  ThreadPool pool(2);
  for (const char* arch : {"llama", "qwen2", "gemma3"}) {
    SCOPED_TRACE(arch);
    const std::string path = testing::temp_path(std::string("backward-") + arch + ".gguf");
    testing::write_tiny_model(path, {.architecture = arch, .n_layers = 2, .seed = 21});
    const auto model = Model::load(path);
    LoraAdapter adapter = testing::lora_pattern(model->config, {.rank = 2, .alpha = 4, .amplitude = 0.3});
    const std::vector<int32_t> tokens = {84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114, 111};
    std::vector<float> weight(tokens.size() - 1, 1.0f / 12);
    weight[3] = 0;  // a target left out
    LoraTrainer trainer(model->config, model->weights, adapter, 0.5f, pool, 16);
    LoraGradients grad = zero_gradients_like(adapter);
    trainer.loss(tokens, weight, &grad);
    for (int l = 0; l < model->config.n_layers; ++l) {
      for (int t = 0; t < kLoraTargets; ++t) {
        LoraPair& p = adapter.layers[l][t];
        if (p.empty()) continue;
        SCOPED_TRACE(std::string(lora_target_name(static_cast<LoraTarget>(t))) + " layer " + std::to_string(l));
        for (std::vector<float>* values : {&p.a, &p.b}) {
          const std::vector<float>& g = values == &p.a ? grad.layers[l][t].a : grad.layers[l][t].b;
          const std::vector<float> saved = *values;
          auto f = [&](const std::vector<float>& v) {
            *values = v;
            const double loss = trainer.loss(tokens, weight);
            *values = saved;
            return loss;
          };
          expect_gradient(f, saved, g, 2e-3, 2e-2, 7);
        }
      }
    }
  }
}

// The same tiny models and adapters as PyTorch saw (scripts/reference/make_backward_reference.py,
// float64 autograd): the loss and every LoRA matrix's gradient (every third value stored).
TEST(Backward, MatchesPyTorchAutograd) {
  std::ifstream f(std::string(FLASHLM_SOURCE_DIR) + "/tests/data/reference/backward_torch.json");
  ASSERT_TRUE(f) << "missing tests/data/reference/backward_torch.json";
  const nlohmann::json ref = nlohmann::json::parse(f);
  const char* dump = std::getenv("FLASHLM_TORCH_INPUTS");  // where to leave the inputs for torch
  ThreadPool pool(2);
  for (const char* arch : {"llama", "qwen2", "gemma3"}) {
    SCOPED_TRACE(arch);
    const std::string path = testing::temp_path(std::string("torch-") + arch + ".gguf");
    testing::write_tiny_model(path, {.architecture = arch, .n_layers = 2, .seed = 31});
    const auto model = Model::load(path);
    LoraAdapter adapter = testing::lora_pattern(model->config, {.rank = 2, .alpha = 4, .amplitude = 0.3});
    const std::vector<int32_t> tokens = {72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10};
    std::vector<float> weight(tokens.size() - 1, 1.0f / 13);
    weight[5] = 0;
    const float scale = 0.5f;
    if (dump) {
      std::filesystem::create_directories(dump);
      const std::string stem = std::string(dump) + "/" + arch;
      std::filesystem::copy_file(path, stem + ".model.gguf", std::filesystem::copy_options::overwrite_existing);
      adapter.save(stem + ".lora.gguf");
      std::ofstream(stem + ".case.json") << nlohmann::json{{"tokens", tokens}, {"weight", weight}, {"scale", scale}};
      continue;  // inputs for the script only
    }
    LoraTrainer trainer(model->config, model->weights, adapter, scale, pool, 16);
    LoraGradients grad = zero_gradients_like(adapter);
    const double loss = trainer.loss(tokens, weight, &grad);
    const nlohmann::json& r = ref[arch];
    EXPECT_NEAR(loss, r["loss"].get<double>(), 1e-4 * std::abs(r["loss"].get<double>()));
    const int every = r["every"];
    double worst = 0;
    size_t compared = 0;
    for (int l = 0; l < model->config.n_layers; ++l) {
      for (int t = 0; t < kLoraTargets; ++t) {
        const LoraPair& g = grad.layers[l][t];
        if (g.empty()) continue;
        const std::string base = lora_base_tensor_name(l, static_cast<LoraTarget>(t));
        for (const auto& [suffix, values] : {std::pair{".lora_a", &g.a}, std::pair{".lora_b", &g.b}}) {
          const auto want = r["gradients"].at(base + suffix).get<std::vector<double>>();
          ASSERT_EQ(want.size(), (values->size() + every - 1) / every) << base << suffix;
          double scale_of = 1e-6;
          for (double v : want) scale_of = std::max(scale_of, std::abs(v));
          for (size_t i = 0; i < want.size(); ++i) {
            const double diff = std::abs((*values)[i * every] - want[i]) / scale_of;
            worst = std::max(worst, diff);
            EXPECT_LT(diff, 1e-3) << base << suffix << " [" << i * every << "]: flashlm "
                                  << (*values)[i * every] << ", torch " << want[i];
            ++compared;
          }
        }
      }
    }
    std::printf("%s: loss %.6f (torch %.6f); %zu gradient values, worst difference %.2e of the "
                "largest in its matrix\n", arch, loss, r["loss"].get<double>(), compared, worst);
  }
}

}  // namespace
}  // namespace flashlm
