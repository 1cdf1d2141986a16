// The loss layer of fine-tuning, tiled (loss/cross_entropy.h: cut cross-entropy) against the
// usual full-logits implementation, on a real model's output head and real hidden states:
// peak memory of each (the process's peak resident set above what it held before, reset
// between the two through /proc/self/clear_refs), seconds for forward + backward, and how far
// apart their losses and gradients are.
//
//   build/loss_memory -m models/gemma-3-270m-q4_k_m.gguf -f data/text/eval.txt -n 256 --rounds 3
#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "common/error.h"
#include "common/process_memory.h"
#include "common/text_file.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "loss/cross_entropy.h"

using namespace flashlm;

namespace {

void reset_peak() { std::ofstream("/proc/self/clear_refs") << "5"; }

struct Run {
  double seconds = 0, loss = 0;
  uint64_t peak = 0;
  std::vector<float> dh;
};

template <typename F>
Run measure(F&& f, int64_t n, int64_t d) {
  Run r;
  r.dh.assign(static_cast<size_t>(n * d), 0.0f);
  return_freed_memory_promptly();
  reset_peak();
  const uint64_t before = resident_set_bytes();
  const auto start = std::chrono::steady_clock::now();
  r.loss = f(r.dh);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const uint64_t peak = peak_resident_set_bytes();
  r.peak = peak > before ? peak - before : 0;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path = "models/gemma-3-270m-q4_k_m.gguf", text_path = "data/text/eval.txt";
  int n = 256, rounds = 3, threads = 2;
  TiledLossOptions options;
  CLI::App app{"tiled (cut) cross-entropy against the full logits: memory, time, agreement"};
  app.add_option("-m,--model", model_path)->capture_default_str();
  app.add_option("-f,--file", text_path)->capture_default_str();
  app.add_option("-n,--tokens", n, "tokens in the loss (a sequence)")->capture_default_str();
  app.add_option("--rounds", rounds)->capture_default_str();
  app.add_option("-t,--threads", threads)->capture_default_str();
  app.add_option("--tile", options.tile, "vocabulary rows per tile")->capture_default_str();
  app.add_option("--filter", options.filter, "backward: softmax below which a row is skipped")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const auto model = Model::load(model_path);
    Engine engine(*model, {.threads = threads, .context_size = n + 1, .max_batch = n});
    const std::vector<int32_t> tokens =
        model->tokenizer.encode(read_text_file(text_path, "the text"), model->tokenizer.add_bos(), false);
    if (static_cast<int64_t>(tokens.size()) < n + 1) fail("the text has fewer than {} tokens", n + 1);
    const std::span<const float> hs =
        engine.transformer().forward_hidden(std::span(tokens).subspan(0, n));
    const std::vector<float> h(hs.begin(), hs.end());
    const std::vector<int32_t> targets(tokens.begin() + 1, tokens.begin() + n + 1);
    const Matrix& w = *engine.transformer().output_head();
    const int64_t d = w.cols;
    const std::vector<float> grad(n, 1.0f / n);
    ThreadPool& pool = engine.pool();
    std::printf("model %s: output head %lld x %lld %s, %d tokens, %d threads\n", model_path.c_str(),
                static_cast<long long>(w.rows), static_cast<long long>(d), type_name(w.type).c_str(), n,
                threads);
    std::printf("logits matrix: %.1f MiB; tiled scratch (tile %lld): %.2f MiB\n",
                n * w.rows * 4.0 / 1048576, static_cast<long long>(options.tile), tiled_loss_scratch_bytes(w, n, options) / 1048576.0);
    TiledLossStats stats;
    auto tiled = [&](std::vector<float>& dh) {
      std::vector<float> nll(n), lse(n);
      tiled_cross_entropy(w, h.data(), n, targets.data(), nll.data(), lse.data(), pool, options);
      tiled_cross_entropy_backward(w, h.data(), n, targets.data(), lse.data(), grad.data(),
                                   dh.data(), pool, options, &stats);
      double s = 0;
      for (float x : nll) s += x;
      return s / n;
    };
    auto naive = [&](std::vector<float>& dh) {
      std::vector<float> nll(n);
      naive_cross_entropy(w, h.data(), n, targets.data(), grad.data(), nll.data(), dh.data(), pool);
      double s = 0;
      for (float x : nll) s += x;
      return s / n;
    };
    // Once unmeasured: the first pass maps the head's pages into the process (file pages that
    // either way would count), so both measured ones start with them resident.
    measure(tiled, n, d);
    for (int r = 0; r < rounds; ++r) {
      stats = {};
      // Alternating order, so neither always runs on a warm cache.
      const bool tiled_first = r % 2 == 0;
      Run a = tiled_first ? measure(tiled, n, d) : measure(naive, n, d);
      Run b = tiled_first ? measure(naive, n, d) : measure(tiled, n, d);
      const Run& t = tiled_first ? a : b;
      const Run& f = tiled_first ? b : a;
      double err = 0, norm = 0;
      for (size_t i = 0; i < t.dh.size(); ++i) {
        err += (t.dh[i] - f.dh[i]) * double(t.dh[i] - f.dh[i]);
        norm += double(f.dh[i]) * f.dh[i];
      }
      std::printf("round %d: tiled %.3f s, peak +%.1f MiB, loss %.5f | full logits %.3f s, peak "
                  "+%.1f MiB, loss %.5f | gradient rel. diff %.2e, rows skipped %.1f%%\n",
                  r + 1, t.seconds, t.peak / 1048576.0, t.loss, f.seconds, f.peak / 1048576.0,
                  f.loss, std::sqrt(err / norm),
                  100.0 * stats.rows_skipped / std::max<int64_t>(1, stats.rows_skipped + stats.rows_computed));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
