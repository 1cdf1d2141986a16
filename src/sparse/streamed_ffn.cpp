#include "sparse/streamed_ffn.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/stopwatch.h"
#include "flash/read_plan.h"

namespace flashlm {

StreamedSparseFfn::StreamedSparseFfn(const FlashModelFile& file, const ModelConfig& config,
                                     const MemoryPlan& plan, std::vector<float> thresholds,
                                     NeuronSelector* selector, IoBackend backend, ThreadPool& pool)
    : file_(file),
      plan_(plan),
      resident_neurons_(std::clamp(plan.resident_neurons_per_layer, 0, file.d_ff())),
      thresholds_(std::move(thresholds)),
      selector_(selector),
      io_(file.path(), backend),
      sparse_ffn_(file.layout(), config.activation, pool) {
  const auto& layers = file_.layers();
  if (thresholds_.size() != layers.size()) {
    fail("internal error: {} thresholds for {} layers", thresholds_.size(), layers.size());
  }
  if (plan_.sparse_reads != SparseReads::Streamed) {
    fail("internal error: the streamed sparse FFN needs a plan with streamed reads");
  }
  // A streamed part spans at most the layer's aligned bytes (layers start page-aligned); one
  // more alignment unit of margin stays within the plan's buffer size.
  const uint64_t align = io_.alignment();
  const uint64_t span = align_up(layers.front().bytes, align) + align;
  buffers_[0] = AlignedBuffer(span);
  // The resident neurons: every layer read once (into the first stream buffer, so that start
  // needs no memory beyond the plan's), checked, and its first neurons kept.
  const size_t stride = file_.layout().stride;
  const size_t keep = static_cast<size_t>(resident_neurons_) * stride;
  resident_ = AlignedBuffer(std::max<size_t>(keep * layers.size(), 1));
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto requests = range_requests(layers[l].offset, align_up(layers[l].bytes, align),
                                         kStreamRequestBytes, buffers_[0].data());
    io_.read_all(requests);
    file_.check_layer(static_cast<int>(l), buffers_[0].data());
    std::memcpy(resident_.data() + keep * l, buffers_[0].data(), keep);
  }
  if (resident_neurons_ < file_.d_ff()) {
    // Requests are sized so that one layer's all fit in the queue at once: they proceed while
    // this thread computes instead of waiting for wait() to refill the queue.
    buffers_[1] = AlignedBuffer(span);
    io_.register_buffers({buffers_[0].span(), buffers_[1].span()});  // best effort
    request_bytes_ = std::max(kStreamRequestBytes,
                              align_up((span + io_.queue_depth() - 1) / io_.queue_depth(), align));
  } else {
    buffers_[0] = AlignedBuffer();  // every neuron resident: nothing streams
  }
}

double StreamedSparseFfn::resident_share() const {
  return static_cast<double>(resident_neurons_) / file_.d_ff();
}

StreamedSparseFfn::~StreamedSparseFfn() {
  if (reading_layer_ < 0) return;
  try {
    io_.wait();
  } catch (const Error&) {
    // The read-ahead was for a token that will not come; its failure concerns nobody.
  }
}

void StreamedSparseFfn::start_reading(int layer) {
  const FlmLayer& l = file_.layers()[layer];
  const uint64_t align = io_.alignment();
  const size_t stride = file_.layout().stride;
  const uint64_t begin = l.offset + resident_neurons_ * stride;
  const uint64_t first = align_down(begin, align);
  const uint64_t last = align_up(l.offset + l.bytes, align);
  first_neuron_at_ = begin - first;
  const int buffer = 1 - computing_buffer_;
  requests_ = range_requests(first, last - first, request_bytes_, buffers_[buffer].data());
  const auto start = Clock::now();
  io_.submit(requests_);
  stats_.io_seconds += seconds_since(start);
  stats_.bytes_read += last - first;
  stats_.read_requests += requests_.size();
  reading_layer_ = layer;
}

const uint8_t* StreamedSparseFfn::streamed_part(int layer) {
  if (reading_layer_ != layer) {
    if (reading_layer_ >= 0) {
      // A read-ahead of another layer (a caller that skipped around): let it land unused.
      reading_layer_ = -1;
      io_.wait();
    }
    start_reading(layer);
  }
  reading_layer_ = -1;
  const auto start = Clock::now();
  io_.wait();
  stats_.io_seconds += seconds_since(start);
  computing_buffer_ = 1 - computing_buffer_;
  return buffers_[computing_buffer_].data() + first_neuron_at_;
}

void StreamedSparseFfn::forward(const FfnStep& step, const float* x, float* out) {
  const int layer = step.layer;
  const int64_t n_tokens = step.n_tokens;
  const int d_ff = file_.d_ff();
  const size_t stride = file_.layout().stride;

  const uint8_t* resident =
      resident_.data() + static_cast<size_t>(layer) * resident_neurons_ * stride;
  if (step.resident_only) {
    // The model drafting for itself: the resident neurons alone, and the read-ahead of the
    // real passes (the next one's first layer, in flight since the last) left running.
    bundles_.clear();
    for (int n = 0; n < resident_neurons_; ++n) bundles_.push_back(resident + n * stride);
    sparse_ffn_.forward(bundles_, x, n_tokens, out, thresholds_[layer]);
    return;
  }

  // 1. This layer's streamed part, and the next layer's read started behind it, so the disk
  // stays busy while this layer and the next one's attention compute.
  const uint8_t* streamed = nullptr;
  if (resident_neurons_ < d_ff) {
    streamed = streamed_part(layer);
    if (overlap_) start_reading(step.next_layer);
  }

  // 2. The neurons to compute. With compute_read every neuron of the layer is in DRAM now
  // (resident, or just streamed), so all are computed under the thresholds, exactly as dense
  // evaluation at the same sparsity: the predictor could only leave out neurons whose weights
  // are here anyway, its misses among the resident ones cost quality (Qwen2.5, 34% of the
  // neurons resident: +3.7% perplexity at 95% recall against +1.1% for the thresholds alone),
  // and the compute runs behind the next layer's reads. predicted-only: the predicted ones.
  const auto streamed_bundle = [&](int32_t n) {
    return streamed + static_cast<size_t>(n - resident_neurons_) * stride;
  };
  bundles_.clear();
  if (compute_read_) {
    const auto start = Clock::now();
    for (int n = 0; n < resident_neurons_; ++n) bundles_.push_back(resident + n * stride);
    for (int n = resident_neurons_; n < d_ff; ++n) bundles_.push_back(streamed_bundle(n));
    stats_.memory_seconds += seconds_since(start);
    sparse_stats_.neurons_active += d_ff;
    sparse_stats_.cache_hits += resident_neurons_;
  } else {
    if (!selector_) fail("internal error: --predicted-only needs an activation predictor");
    auto start = Clock::now();
    selector_->select(layer, x, n_tokens, active_);
    sparse_stats_.select_seconds += seconds_since(start);
    start = Clock::now();
    for (int32_t n : active_) {
      bundles_.push_back(n < resident_neurons_ ? resident + static_cast<size_t>(n) * stride
                                               : streamed_bundle(n));
    }
    stats_.memory_seconds += seconds_since(start);
    sparse_stats_.neurons_active += active_.size();
    sparse_stats_.cache_hits += static_cast<uint64_t>(
        std::lower_bound(active_.begin(), active_.end(), resident_neurons_) - active_.begin());
  }

  // 3. The FFN over them.
  const auto start = Clock::now();
  sparse_ffn_.forward(bundles_, x, n_tokens, out, thresholds_[layer]);
  stats_.compute_seconds += seconds_since(start);

  stats_.neurons_computed += bundles_.size() * static_cast<uint64_t>(n_tokens);
  sparse_stats_.neurons_loaded += static_cast<uint64_t>(d_ff - resident_neurons_);
  sparse_stats_.layer_steps += 1;
}

}  // namespace flashlm
