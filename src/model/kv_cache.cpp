#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"

namespace flashlm {
namespace {

// The cache stores each head's slice of a row as whole blocks of its type, so that a head's
// keys and values are rows of their own for the kernels.
void check_type(const ModelConfig& c, TensorType type, const char* what, const char* flag) {
  if (type != TensorType::F32 && type != TensorType::F16 && type != TensorType::Q8_0) {
    fail("the KV cache cannot store {} as {}; {} takes f32, f16 or q8_0", what, type_name(type),
         flag);
  }
  const int64_t block = type_traits(type).block_size;
  if (c.head_dim % block != 0) {
    fail(
        "a {} KV cache stores {} in blocks of {} values, and this model's head_dim {} is not a "
        "multiple of {}; use {} f16",
        type_name(type), what, block, c.head_dim, block, flag);
  }
}

}  // namespace

uint64_t KvCache::bytes(const ModelConfig& c, int capacity, TensorType k, TensorType v) {
  check_type(c, k, "keys", "--cache-type-k");
  check_type(c, v, "values", "--cache-type-v");
  const uint64_t rows = static_cast<uint64_t>(c.n_layers) * std::max(capacity, 0);
  return rows * (row_bytes(k, c.kv_dim()) + row_bytes(v, c.kv_dim()));
}

KvCache::KvCache(const ModelConfig& c, int capacity, TensorType k, TensorType v)
    : n_layers_(c.n_layers), capacity_(capacity), key_type_(k), value_type_(v) {
  if (capacity <= 0) fail("a KV cache needs room for at least one position, not {}", capacity);
  check_type(c, k, "keys", "--cache-type-k");
  check_type(c, v, "values", "--cache-type-v");
  key_row_bytes_ = row_bytes(k, c.kv_dim());
  value_row_bytes_ = row_bytes(v, c.kv_dim());
  key_head_bytes_ = row_bytes(k, c.head_dim);
  value_head_bytes_ = row_bytes(v, c.head_dim);
  const size_t rows = static_cast<size_t>(c.n_layers) * capacity;
  keys_.resize(rows * key_row_bytes_);
  values_.resize(rows * value_row_bytes_);
}

void KvCache::truncate(int n) { size_ = std::clamp(n, 0, size_); }

void KvCache::keep_path(int base, std::span<const int> slots) {
  const int kept = static_cast<int>(slots.size());
  for (int j = 0; j < kept; ++j) {
    if (slots[j] < base + j || slots[j] >= size_ || (j > 0 && slots[j] <= slots[j - 1])) {
      fail("internal error: a draft tree's path is not ascending within the cache");
    }
  }
  for (int layer = 0; layer < n_layers_; ++layer) {
    for (int j = 0; j < kept; ++j) {
      if (slots[j] == base + j) continue;
      std::memcpy(keys(layer, base + j), keys(layer, slots[j]), key_row_bytes_);
      std::memcpy(values(layer, base + j), values(layer, slots[j]), value_row_bytes_);
    }
  }
  size_ = base + kept;
}

}  // namespace flashlm
