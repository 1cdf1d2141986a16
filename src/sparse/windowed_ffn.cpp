#include "sparse/windowed_ffn.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/error.h"

namespace flashlm {
namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}
}  // namespace

WindowedSparseFfn::WindowedSparseFfn(const FlashModelFile& file, const ModelConfig& config,
                                     const MemoryPlan& plan, int window,
                                     std::vector<float> thresholds, NeuronSelector& selector,
                                     IoBackend backend, const PlannerSettings& planner,
                                     ThreadPool& pool)
    : file_(file),
      plan_(plan),
      thresholds_(std::move(thresholds)),
      selector_(selector),
      planner_(planner),
      io_(file.path(), backend),
      sparse_ffn_(file.layout(), config.activation, pool) {
  if (thresholds_.size() != file.layers().size()) {
    fail("internal error: {} thresholds for {} layers", thresholds_.size(), file.layers().size());
  }
  planner_.alignment = std::max<uint64_t>(planner_.alignment, io_.alignment());
  for (size_t l = 0; l < file.layers().size(); ++l) {
    caches_.emplace_back(file.d_ff(), file.layout().stride, plan.cache_neurons_per_layer, window);
  }
}

void WindowedSparseFfn::reset_stats() {
  stats_ = {};
  sparse_stats_ = {};
}

void WindowedSparseFfn::forward(int layer, const float* x, int64_t n_tokens, float* out) {
  const FlmLayer& l = file_.layers()[layer];
  const size_t stride = file_.layout().stride;
  NeuronCache& cache = caches_[layer];
  if (layer == 0) ++step_;

  // 1. Which neurons are needed.
  auto start = Clock::now();
  selector_.select(layer, x, n_tokens, active_);
  sparse_stats_.select_seconds += seconds_since(start);

  // 2. Which of them must come from flash; the cache makes room by its window and LRU rules.
  start = Clock::now();
  cache.begin_token(step_, active_, to_load_, uncached_);
  stats_.memory_seconds += seconds_since(start);

  // 3. Read them, neighbours coalesced into larger requests.
  to_read_.clear();
  std::merge(to_load_.begin(), to_load_.end(), uncached_.begin(), uncached_.end(),
             std::back_inserter(to_read_));
  const uint8_t* staged = nullptr;
  ReadPlan plan;
  if (!to_read_.empty()) {
    plan = plan_reads(to_read_, l.offset, stride, planner_);
    if (staging_.size() < plan.buffer_bytes) staging_ = AlignedBuffer(plan.buffer_bytes);
    start = Clock::now();
    io_.read_all(plan.requests(staging_.data()));
    stats_.io_seconds += seconds_since(start);
    stats_.bytes_read += plan.buffer_bytes;
    stats_.read_requests += plan.reads.size();
    staged = staging_.data();
  }

  // 4. Copy the loaded bundles into their cache rows.
  start = Clock::now();
  auto staged_bundle = [&](int32_t neuron) {
    const size_t k = std::lower_bound(to_read_.begin(), to_read_.end(), neuron) - to_read_.begin();
    return staged + plan.item_offsets[k];
  };
  for (int32_t n : to_load_) std::memcpy(cache.bundle(n), staged_bundle(n), stride);
  bundles_.clear();
  for (int32_t n : active_) {
    bundles_.push_back(cache.contains(n) ? cache.bundle(n) : staged_bundle(n));
  }
  stats_.memory_seconds += seconds_since(start);

  // 5. The FFN over the active neurons only.
  start = Clock::now();
  sparse_ffn_.forward(bundles_, x, n_tokens, out, thresholds_[layer]);
  stats_.compute_seconds += seconds_since(start);

  stats_.neurons_computed += active_.size() * static_cast<uint64_t>(n_tokens);
  sparse_stats_.neurons_active += active_.size();
  sparse_stats_.neurons_loaded += to_read_.size();
  sparse_stats_.cache_hits += active_.size() - to_read_.size();
  sparse_stats_.layer_steps += 1;
}

}  // namespace flashlm
