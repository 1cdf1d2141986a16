#include "sparse/flash_ffn.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/mapped_files.h"
#include "common/stopwatch.h"
#include "common/thread_pool.h"
#include "flash/read_plan.h"

namespace flashlm {

FlashFeedForward::FlashFeedForward(const FlashModelFile& file, const ModelConfig& config,
                                   const MemoryPlan& plan, IoBackend backend, ThreadPool& pool)
    : file_(file),
      plan_(plan),
      pool_(pool),
      io_(std::make_unique<IoEngine>(file.path(), backend)),
      sparse_ffn_(file.layout(), config.activation, pool) {
  const auto& layers = file_.layers();
  const size_t stride = file_.layout().stride;
  switch (plan_.mode) {
    case FfnMode::Dense: {
      // Every layer read once, checked, and kept.
      resident_ = AlignedBuffer(file_.bundle_region_bytes());
      uint64_t at = 0;
      for (size_t l = 0; l < layers.size(); ++l) {
        AlignedBuffer staging;
        const uint8_t* data = read_layer_range(static_cast<int>(l), 0, layers[l].bytes, staging);
        file_.check_layer(static_cast<int>(l), data);
        std::memcpy(resident_.data() + at, data, layers[l].bytes);
        at += layers[l].bytes;
      }
      break;
    }
    case FfnMode::Hybrid: {
      const size_t keep = static_cast<size_t>(plan_.resident_neurons_per_layer) * stride;
      resident_ = AlignedBuffer(std::max<size_t>(keep * layers.size(), 1));
      for (size_t l = 0; l < layers.size(); ++l) {
        AlignedBuffer staging;
        const uint8_t* data = read_layer_range(static_cast<int>(l), 0, layers[l].bytes, staging);
        file_.check_layer(static_cast<int>(l), data);
        std::memcpy(resident_.data() + keep * l, data, keep);
      }
      break;
    }
    case FfnMode::Naive:
      for (size_t l = 0; l < layers.size(); ++l) {
        const uint8_t* data = read_layer_range(static_cast<int>(l), 0, layers[l].bytes, stream_);
        file_.check_layer(static_cast<int>(l), data);
      }
      break;
    case FfnMode::Mmap: {
      map_bytes_ = file_.gguf().file_size();
      map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, io_->fd(), 0);
      if (map_ == MAP_FAILED) {
        map_ = nullptr;
        fail("cannot memory-map '{}': {}", file_.path(), std::strerror(errno));
      }
      register_mapped_file(map_, map_bytes_, file_.path());
      break;
    }
    case FfnMode::Sparse:
    case FfnMode::SparseOracle:
      fail("internal error: {} mode is served by the windowed sparse FFN", ffn_mode_name(plan_.mode));
  }
  stats_ = {};
}

FlashFeedForward::~FlashFeedForward() {
  if (map_) {
    unregister_mapped_file(map_);
    ::munmap(map_, map_bytes_);
  }
}

const uint8_t* FlashFeedForward::read_layer_range(int layer, uint64_t begin, uint64_t end,
                                                  AlignedBuffer& buffer) {
  const FlmLayer& l = file_.layers()[layer];
  const uint64_t align = io_->alignment();
  const uint64_t first = (l.offset + begin) / align * align;
  const uint64_t last = (l.offset + end + align - 1) / align * align;
  const uint64_t bytes = last - first;
  if (buffer.size() < bytes) {
    buffer = AlignedBuffer(bytes);
    // The per-token stream buffer is pinned for io_uring once (false where it cannot be: the
    // reads then work unregistered).
    if (&buffer == &stream_) io_->register_buffers({std::span(stream_.data(), stream_.size())});
  }
  const auto requests = range_requests(first, bytes, kStreamRequestBytes, buffer.data());
  const auto start = Clock::now();
  io_->read_all(requests);
  stats_.io_seconds += seconds_since(start);
  stats_.bytes_read += bytes;
  stats_.read_requests += requests.size();
  return buffer.data() + (l.offset + begin - first);
}

void FlashFeedForward::gather_bundles(int layer) {
  const FlmLayer& l = file_.layers()[layer];
  const size_t stride = file_.layout().stride;
  const int d_ff = file_.d_ff();
  // Neurons [0, split) come from `first`, [split, d_ff) from `second`.
  const uint8_t* first = nullptr;
  const uint8_t* second = nullptr;
  int split = d_ff;
  switch (plan_.mode) {
    case FfnMode::Dense:
      first = resident_.data() + static_cast<size_t>(layer) * l.bytes;
      break;
    case FfnMode::Naive:
      first = read_layer_range(layer, 0, l.bytes, stream_);
      break;
    case FfnMode::Hybrid:
      split = plan_.resident_neurons_per_layer;
      first = resident_.data() + static_cast<size_t>(layer) * split * stride;
      if (split < d_ff) {
        second = read_layer_range(layer, static_cast<uint64_t>(split) * stride, l.bytes, stream_);
      }
      break;
    case FfnMode::Mmap:
      first = static_cast<const uint8_t*>(map_) + l.offset;
      break;
    case FfnMode::Sparse:
    case FfnMode::SparseOracle:
      break;  // never constructed in these modes
  }
  const auto start = Clock::now();
  bundles_.resize(d_ff);
  for (int i = 0; i < d_ff; ++i) {
    bundles_[i] = i < split ? first + static_cast<size_t>(i) * stride
                            : second + static_cast<size_t>(i - split) * stride;
  }
  gathered_layer_ = layer;
  stats_.memory_seconds += seconds_since(start);
}

double FlashFeedForward::resident_share() const {
  switch (plan_.mode) {
    case FfnMode::Dense:
      return 1.0;
    case FfnMode::Hybrid:
      return static_cast<double>(plan_.resident_neurons_per_layer) / file_.d_ff();
    default:
      return 0.0;  // naive and mmap hold nothing of their own
  }
}

void FlashFeedForward::forward(const FfnStep& step, const float* x, float* out) {
  const int layer = step.layer;
  const int64_t n_tokens = step.n_tokens;
  if (step.resident_only && plan_.mode != FfnMode::Dense) {
    // The resident first neurons alone, nothing read.
    if (plan_.mode != FfnMode::Hybrid) {
      fail("internal error: a resident-only pass in {} mode, which holds no neurons",
           ffn_mode_name(plan_.mode));
    }
    const size_t stride = file_.layout().stride;
    const int keep = plan_.resident_neurons_per_layer;
    const uint8_t* first = resident_.data() + static_cast<size_t>(layer) * keep * stride;
    resident_bundles_.resize(keep);
    for (int i = 0; i < keep; ++i) resident_bundles_[i] = first + static_cast<size_t>(i) * stride;
    sparse_ffn_.forward(resident_bundles_, x, n_tokens, out,
                        thresholds_.empty() ? 0.0f : thresholds_[layer]);
    return;
  }
  gather_bundles(layer);
  const auto start = Clock::now();
  sparse_ffn_.forward(bundles_, x, n_tokens, out, thresholds_.empty() ? 0.0f : thresholds_[layer]);
  stats_.compute_seconds += seconds_since(start);
  stats_.neurons_computed += bundles_.size() * static_cast<uint64_t>(n_tokens);
}

void FlashFeedForward::set_thresholds(std::vector<float> thresholds) {
  if (!thresholds.empty() && thresholds.size() != file_.layers().size()) {
    fail("internal error: {} thresholds for {} layers", thresholds.size(), file_.layers().size());
  }
  thresholds_ = std::move(thresholds);
}

void FlashFeedForward::activations(int layer, const float* x, float* out) {
  if (plan_.mode == FfnMode::Dense || plan_.mode == FfnMode::Mmap) {
    gather_bundles(layer);
  } else if (layer != gathered_layer_) {
    fail("internal error: activations of layer {} after reading layer {}", layer, gathered_layer_);
  }
  sparse_ffn_.activations(bundles_, x, out);
}

}  // namespace flashlm
