// The keys and values one sequence has produced, layer by layer, position by position: what
// attention looks back on. A transformer pass appends to one or several caches (one per
// sequence of a batch), and a cache rolls back to any earlier position (rejected drafts, a
// prompt that shares only a prefix with the previous one); what follows the new end is then
// simply overwritten.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"
#include "quant/types.h"

namespace flashlm {

class KvCache {
 public:
  // Room for `capacity` positions of every layer, keys stored as `k`, values as `v` (F32, F16
  // or Q8_0; Q8_0 needs head_dim a multiple of 32). Throws a clear error otherwise.
  KvCache(const ModelConfig& config, int capacity, TensorType k, TensorType v);

  // What a cache with these settings allocates; throws like the constructor on a bad type.
  static uint64_t bytes(const ModelConfig& config, int capacity, TensorType k, TensorType v);

  int size() const { return size_; }  // positions held: the next token goes at size()
  int capacity() const { return capacity_; }
  // Forgets everything from position n on (n = 0 starts over).
  void truncate(int n);
  // Keeps, after position `base`, the rows of `slots` (positions a tree pass wrote, ascending,
  // each at least base + its index) moved to base, base + 1, ...: the accepted path of a draft
  // tree. The cache then holds base + slots.size() positions.
  void keep_path(int base, std::span<const int> slots);
  // Counts `n` positions whose rows the pass has written as held.
  void extend(int n) { size_ += n; }
  size_t bytes() const { return keys_.size() + values_.size(); }

  TensorType key_type() const { return key_type_; }
  TensorType value_type() const { return value_type_; }
  // A position's row (kv_dim values, head after head, each head whole blocks of its type).
  size_t key_row_bytes() const { return key_row_bytes_; }
  size_t value_row_bytes() const { return value_row_bytes_; }
  size_t key_head_bytes() const { return key_head_bytes_; }
  size_t value_head_bytes() const { return value_head_bytes_; }
  uint8_t* keys(int layer, int64_t position) {
    return keys_.data() + row_index(layer, position) * key_row_bytes_;
  }
  uint8_t* values(int layer, int64_t position) {
    return values_.data() + row_index(layer, position) * value_row_bytes_;
  }

 private:
  size_t row_index(int layer, int64_t position) const {
    return static_cast<size_t>(layer) * capacity_ + static_cast<size_t>(position);
  }

  int n_layers_;
  int capacity_;
  int size_ = 0;
  TensorType key_type_, value_type_;
  size_t key_row_bytes_, value_row_bytes_, key_head_bytes_, value_head_bytes_;
  std::vector<uint8_t> keys_, values_;  // [layer][position] rows
};

}  // namespace flashlm
