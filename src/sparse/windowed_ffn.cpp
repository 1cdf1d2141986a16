#include "sparse/windowed_ffn.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/stopwatch.h"

namespace flashlm {

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
  // The plan counts one layer's staging buffer: take it now, so memory is flat from the start.
  staging_ = AlignedBuffer(layer_buffer_bytes(file));
  io_.register_buffers({std::span(staging_.data(), staging_.size())});  // best effort
}

void WindowedSparseFfn::add_read_neighbours(const ReadPlan& plan, uint64_t layer_offset,
                                            size_t stride) {
  // The reads of one run are consecutive in the file and in the staging buffer; a neuron
  // counts when its whole bundle lies inside a run. to_read_ and ready_ (sorted) are already
  // being computed.
  const uint8_t* staged = staging_.data();
  const int64_t d_ff = file_.d_ff();
  size_t k = 0;
  while (k < plan.reads.size()) {
    const uint64_t begin = plan.reads[k].offset;
    const uint64_t buffer_begin = plan.reads[k].buffer_offset;
    uint64_t end = begin + plan.reads[k].length;
    for (++k; k < plan.reads.size() && plan.reads[k].offset == end &&
              plan.reads[k].buffer_offset == buffer_begin + (end - begin);
         ++k) {
      end += plan.reads[k].length;
    }
    const uint64_t from = begin > layer_offset ? begin - layer_offset : 0;
    const int64_t first = static_cast<int64_t>((from + stride - 1) / stride);
    const int64_t last = std::min<int64_t>(
        d_ff, end > layer_offset ? static_cast<int64_t>((end - layer_offset) / stride) : 0);
    // Both lists are sorted and the run's ids ascend: walk them alongside, one search per run.
    auto reading = std::lower_bound(to_read_.begin(), to_read_.end(), first);
    auto cached = std::lower_bound(ready_.begin(), ready_.end(), first);
    for (int64_t n = first; n < last; ++n) {
      const auto id = static_cast<int32_t>(n);
      while (reading != to_read_.end() && *reading < id) ++reading;
      while (cached != ready_.end() && *cached < id) ++cached;
      if ((reading != to_read_.end() && *reading == id) ||
          (cached != ready_.end() && *cached == id)) {
        continue;
      }
      bundles_.push_back(staged + buffer_begin + (layer_offset + n * stride - begin));
      ++sparse_stats_.neurons_read_extra;
    }
  }
}

void WindowedSparseFfn::forward(const FfnStep& step, const float* x, float* out) {
  if (step.resident_only) {
    fail("internal error: a resident-only pass with planned reads (resident_share() is 0)");
  }
  const int layer = step.layer;
  const int64_t n_tokens = step.n_tokens;
  const FlmLayer& l = file_.layers()[layer];
  const size_t stride = file_.layout().stride;
  NeuronCache& cache = caches_[layer];

  // 1. Which neurons are needed.
  auto start = Clock::now();
  selector_.select(layer, x, n_tokens, active_);
  sparse_stats_.select_seconds += seconds_since(start);

  // 2. Which of them must come from flash; the cache makes room by its window and LRU rules.
  start = Clock::now();
  cache.begin_token(step.pass, active_, to_load_, uncached_);
  stats_.memory_seconds += seconds_since(start);

  // 3. Start reading them, neighbours coalesced into larger requests.
  to_read_.clear();
  std::merge(to_load_.begin(), to_load_.end(), uncached_.begin(), uncached_.end(),
             std::back_inserter(to_read_));
  ReadPlan plan;
  if (!to_read_.empty()) {
    plan = plan_reads(to_read_, l.offset, stride, planner_);
    if (staging_.size() < plan.buffer_bytes) {
      staging_ = AlignedBuffer(plan.buffer_bytes);
      io_.register_buffers({std::span(staging_.data(), staging_.size())});  // best effort
    }
    requests_ = plan.requests(staging_.data());
    start = Clock::now();
    io_.submit(requests_);
    if (!overlap_) io_.wait();
    stats_.io_seconds += seconds_since(start);
    stats_.bytes_read += plan.buffer_bytes;
    stats_.read_requests += plan.reads.size();
  }

  // 4. While the reads are in flight, the FFN over the active neurons already in DRAM.
  ready_.clear();
  std::set_difference(active_.begin(), active_.end(), to_read_.begin(), to_read_.end(),
                      std::back_inserter(ready_));
  start = Clock::now();
  bundles_.clear();
  for (int32_t n : ready_) bundles_.push_back(cache.bundle(n));
  sparse_ffn_.forward(bundles_, x, n_tokens, out, thresholds_[layer]);
  stats_.compute_seconds += seconds_since(start);

  if (!to_read_.empty()) {
    // 5. Wait for the reads (only this wait is I/O time the token pays), then copy the loaded
    // bundles into their cache rows.
    if (overlap_) {
      start = Clock::now();
      io_.wait();
      stats_.io_seconds += seconds_since(start);
    }
    start = Clock::now();
    const uint8_t* staged = staging_.data();
    bundles_.clear();
    for (size_t k = 0; k < to_read_.size(); ++k) {
      const int32_t n = to_read_[k];
      const uint8_t* bundle = staged + plan.item_offsets[k];
      if (std::binary_search(to_load_.begin(), to_load_.end(), n)) {
        std::memcpy(cache.bundle(n), bundle, stride);
        bundle = cache.bundle(n);
      }
      bundles_.push_back(bundle);
    }
    if (compute_read_) add_read_neighbours(plan, l.offset, stride);
    stats_.memory_seconds += seconds_since(start);

    // 6. The FFN over the neurons just read, added to the rest.
    start = Clock::now();
    loaded_out_.resize(static_cast<size_t>(n_tokens) * file_.layout().d_model);
    sparse_ffn_.forward(bundles_, x, n_tokens, loaded_out_.data(), thresholds_[layer]);
    for (size_t i = 0; i < loaded_out_.size(); ++i) out[i] += loaded_out_[i];
    stats_.compute_seconds += seconds_since(start);
  }

  stats_.neurons_computed += active_.size() * static_cast<uint64_t>(n_tokens);
  sparse_stats_.neurons_active += active_.size();
  sparse_stats_.neurons_loaded += to_read_.size();
  sparse_stats_.cache_hits += active_.size() - to_read_.size();
  sparse_stats_.layer_steps += 1;
}

}  // namespace flashlm
