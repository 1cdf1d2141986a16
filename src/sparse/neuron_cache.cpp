#include "sparse/neuron_cache.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"

namespace flashlm {

NeuronCache::NeuronCache(int d_ff, size_t bundle_bytes, int capacity, int window)
    : bundle_bytes_(bundle_bytes),
      capacity_(std::clamp(capacity, 0, d_ff)),
      window_(window),
      rows_(std::max<size_t>(static_cast<size_t>(std::clamp(capacity, 0, d_ff)) * bundle_bytes, 1)),
      neuron_of_(capacity_, -1),
      last_used_(capacity_, 0),
      row_of_(d_ff, -1) {
  if (window < 1) fail("the neuron cache window must be at least one token, got {}", window);
}

void NeuronCache::remove_row(int row) {
  const int last = used_ - 1;
  row_of_[neuron_of_[row]] = -1;
  if (row != last) {
    std::memcpy(row_data(row), row_data(last), bundle_bytes_);
    neuron_of_[row] = neuron_of_[last];
    last_used_[row] = last_used_[last];
    row_of_[neuron_of_[row]] = row;
  }
  neuron_of_[last] = -1;
  --used_;
  ++stats_.evictions;
}

int NeuronCache::append(int32_t neuron, int64_t step) {
  const int row = used_++;
  neuron_of_[row] = neuron;
  last_used_[row] = step;
  row_of_[neuron] = row;
  return row;
}

void NeuronCache::begin_token(int64_t step, std::span<const int32_t> active,
                              std::vector<int32_t>& to_load, std::vector<int32_t>& uncached) {
  to_load.clear();
  uncached.clear();
  // Mark the cached active neurons as used now, so the window keeps them.
  for (int32_t n : active) {
    const int row = row_of_[n];
    if (row >= 0) {
      last_used_[row] = step;
      ++stats_.hits;
    } else {
      to_load.push_back(n);
      ++stats_.misses;
    }
  }
  // Drop the neurons that were not used in the last `window` tokens. Walking backwards keeps
  // the rows not yet visited in place while swap-deletes pull the last row forward.
  for (int row = used_ - 1; row >= 0; --row) {
    if (last_used_[row] <= step - window_) remove_row(row);
  }
  const int free_rows = capacity_ - used_;
  const int wanted = static_cast<int>(to_load.size());
  if (wanted > free_rows) {
    // Evict the least recently used neurons that are not active now.
    order_.clear();
    for (int row = 0; row < used_; ++row) {
      if (last_used_[row] < step) order_.push_back(neuron_of_[row]);
    }
    const int evict = std::min<int>(wanted - free_rows, static_cast<int>(order_.size()));
    std::partial_sort(order_.begin(), order_.begin() + evict, order_.end(),
                      [&](int32_t a, int32_t b) {
                        return last_used_[row_of_[a]] < last_used_[row_of_[b]];
                      });
    for (int i = 0; i < evict; ++i) remove_row(row_of_[order_[i]]);
  }
  const int room = capacity_ - used_;
  if (wanted > room) {
    uncached.assign(to_load.begin() + room, to_load.end());
    to_load.resize(room);
  }
  for (int32_t n : to_load) append(n, step);
}

}  // namespace flashlm
