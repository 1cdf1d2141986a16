#include "sparse/sparse_ffn.h"

#include <algorithm>
#include <cmath>

#include "common/thread_pool.h"
#include "ops/ops.h"

namespace flashlm {

SparseFfn::SparseFfn(const BundleLayout& layout, Activation activation, ThreadPool& pool)
    : layout_(layout),
      activation_(activation),
      pool_(pool),
      accumulators_(pool.size()),
      token_activations_(pool.size()),
      batch_gate_(pool.size()),
      batch_up_(pool.size()) {}

void SparseFfn::prepare(const float* x, int64_t n_tokens) {
  const int64_t d = layout_.d_model;
  if (static_cast<int64_t>(up_inputs_.size()) < n_tokens) {
    up_inputs_.resize(n_tokens);
    gate_inputs_.resize(n_tokens);
  }
  for (int64_t t = 0; t < n_tokens; ++t) {
    up_inputs_[t].prepare(layout_.up_type, x + t * d, d);
    if (layout_.gated) gate_inputs_[t].prepare(layout_.gate_type, x + t * d, d);
  }
}

float SparseFfn::combine(float gate, float up) const {
  return layout_.gated ? activate(activation_, gate) * up : activate(activation_, up);
}

float SparseFfn::activation(const uint8_t* bundle, int64_t token) const {
  const float up = dot(layout_.up_type, bundle + layout_.up_offset(), up_inputs_[token]);
  if (!layout_.gated) return combine(0.0f, up);
  return combine(dot(layout_.gate_type, bundle + layout_.gate_offset(), gate_inputs_[token]), up);
}

void SparseFfn::neurons(std::span<const uint8_t* const> bundles, int64_t n_tokens, float threshold,
                        float* acc, int thread) {
  // Several tokens: the gate and up rows of a run of neighbouring bundles (a layer's bundles
  // sit at a fixed stride, in the cache as in a streamed layer) go through the matrix kernel,
  // which unpacks each row once for all tokens and gives each token bit for bit what dot()
  // gives it alone; then the run's down rows for all tokens at once (axpy_rows_tokens).
  const int64_t d = layout_.d_model;
  const size_t stride = layout_.stride;
  std::vector<float>& h = token_activations_[thread];
  h.resize(static_cast<size_t>(kRun) * n_tokens);
  std::vector<float>& up = batch_up_[thread];
  std::vector<float>& gate = batch_gate_[thread];
  up.resize(static_cast<size_t>(kRun) * n_tokens);
  if (layout_.gated) gate.resize(static_cast<size_t>(kRun) * n_tokens);
  const int64_t n = static_cast<int64_t>(bundles.size());
  for (int64_t i = 0; i < n;) {
    // The longest run of bundles at the fixed stride, at most kRun.
    int64_t run = 1;
    while (run < kRun && i + run < n && bundles[i + run] == bundles[i] + run * stride) ++run;
    const uint8_t* first = bundles[i];
    if (n_tokens == 1) {
      // One token: the dot kernels straight from the bundles (nothing to share an unpacked
      // row with).
      for (int64_t r = 0; r < run; ++r) {
        if (i + r + 1 < n) prefetch(bundles[i + r + 1], stride);
        const float a = activation(bundles[i + r], 0);
        h[r] = std::abs(a) > threshold ? a : 0.0f;
      }
    } else {
      if (i + run < n) prefetch(bundles[i + run], stride);
      matmul_rows(layout_.up_type, first + layout_.up_offset(), stride, up_inputs_.data(),
                  n_tokens, 0, run, up.data(), run);
      if (layout_.gated) {
        matmul_rows(layout_.gate_type, first + layout_.gate_offset(), stride,
                    gate_inputs_.data(), n_tokens, 0, run, gate.data(), run);
      }
      for (int64_t r = 0; r < run; ++r) {
        for (int64_t t = 0; t < n_tokens; ++t) {
          const float a = combine(layout_.gated ? gate[t * run + r] : 0.0f, up[t * run + r]);
          h[r * n_tokens + t] = std::abs(a) > threshold ? a : 0.0f;
        }
      }
    }
    // The run's down rows, every token's sum held in registers across them.
    axpy_rows_tokens(layout_.down_type, first + layout_.down_offset(), stride, run, h.data(),
                     n_tokens, acc, d, d);
    i += run;
  }
}

void SparseFfn::forward(std::span<const uint8_t* const> bundles, const float* x, int64_t n_tokens,
                        float* out, float threshold) {
  const int64_t d = layout_.d_model;
  prepare(x, n_tokens);
  // Neurons are summed in fixed slices, each into its own accumulator, and the slices added in
  // order: the result does not depend on which thread ran which slice. That matters beyond
  // tidiness: with thresholds, a rounding difference can flip a neuron near its threshold and
  // make two runs of the same mode diverge.
  const int64_t n = static_cast<int64_t>(bundles.size());
  const int64_t slices = std::clamp<int64_t>(n / 8, 1, int64_t{pool_.size()} * 4);
  if (static_cast<int64_t>(accumulators_.size()) < slices) accumulators_.resize(slices);
  for (int64_t s = 0; s < slices; ++s) {
    accumulators_[s].assign(static_cast<size_t>(n_tokens) * d, 0.0f);
  }
  pool_.parallel_for(slices, [&](int64_t first, int64_t last, int thread) {
    for (int64_t s = first; s < last; ++s) {
      float* acc = accumulators_[s].data();
      const int64_t begin = n * s / slices, end = n * (s + 1) / slices;
      neurons(bundles.subspan(begin, end - begin), n_tokens, threshold, acc, thread);
    }
  });
  std::fill_n(out, n_tokens * d, 0.0f);
  for (int64_t s = 0; s < slices; ++s) {
    const float* acc = accumulators_[s].data();
    for (int64_t i = 0; i < n_tokens * d; ++i) out[i] += acc[i];
  }
}

void SparseFfn::activations(std::span<const uint8_t* const> bundles, const float* x, float* out) {
  prepare(x, 1);
  pool_.parallel_for(
      static_cast<int64_t>(bundles.size()),
      [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) out[i] = activation(bundles[i], 0);
      },
      64);
}

}  // namespace flashlm
