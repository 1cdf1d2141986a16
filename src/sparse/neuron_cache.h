// The windowed neuron cache of one layer, with the paper's DRAM memory manager.
//
// The bundles of the neurons active during the last `window` tokens stay in DRAM. Storage is
// one preallocated matrix of `capacity` rows of one bundle each, beside it the original neuron
// id of each row and the step at which each row was last used. Deleting a neuron moves the
// last used row into its hole; inserting appends. Neuron order does not matter to the FFN sum,
// so nothing is ever reallocated or compacted, and the steady state allocates nothing.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "flash/io_engine.h"

namespace flashlm {

struct NeuronCacheStats {
  uint64_t hits = 0;       // active neurons found in the cache
  uint64_t misses = 0;     // active neurons that had to be loaded
  uint64_t evictions = 0;  // neurons dropped (left the window, or least recently used)
};

class NeuronCache {
 public:
  NeuronCache(int d_ff, size_t bundle_bytes, int capacity, int window);

  // Starts token `step` (steps increase by one per token) with the sorted, duplicate-free
  // `active` neurons. Drops the neurons that left the window, then fills `to_load` with the
  // active neurons that are not cached (sorted) and reserves a row for each of them, evicting
  // the least recently used inactive neurons if the matrix is full. Active neurons that still
  // find no row (more active than capacity) go to `uncached`: the caller computes them from a
  // transient buffer.
  void begin_token(int64_t step, std::span<const int32_t> active, std::vector<int32_t>& to_load,
                   std::vector<int32_t>& uncached);

  bool contains(int32_t neuron) const { return row_of_[neuron] >= 0; }
  // The bundle bytes of a cached neuron (to fill after begin_token, or to compute with).
  uint8_t* bundle(int32_t neuron) { return row_data(row_of_[neuron]); }
  const uint8_t* bundle(int32_t neuron) const { return rows_.data() + row_offset(row_of_[neuron]); }

  int size() const { return used_; }
  int capacity() const { return capacity_; }
  int window() const { return window_; }
  int32_t neuron_at(int row) const { return neuron_of_[row]; }
  const NeuronCacheStats& stats() const { return stats_; }
  size_t bytes() const { return rows_.size(); }

 private:
  size_t row_offset(int row) const { return static_cast<size_t>(row) * bundle_bytes_; }
  uint8_t* row_data(int row) { return rows_.data() + row_offset(row); }
  void remove_row(int row);
  int append(int32_t neuron, int64_t step);

  size_t bundle_bytes_;
  int capacity_;
  int window_;
  int used_ = 0;
  AlignedBuffer rows_;
  std::vector<int32_t> neuron_of_;  // per row
  std::vector<int64_t> last_used_;  // per row
  std::vector<int32_t> row_of_;     // per neuron, -1 when not cached
  std::vector<int> order_;          // scratch for least-recently-used eviction
  NeuronCacheStats stats_;
};

}  // namespace flashlm
