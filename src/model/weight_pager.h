// The base weights of a model left on flash while it trains (MeBP's discipline): they stay
// memory-mapped from the GGUF file, and a pass that goes through them a layer at a time holds
// about one layer of them: the next layer is prefetched while one computes, and a layer is
// dropped from memory (the process's pages and the page cache) when the pass leaves it, to be
// read from the file again when the backward pass comes back to it. The output head goes the
// same way, a tile of its rows at a time.
#pragma once

#include <cstdint>

#include "model/weights.h"

namespace flashlm {

class GgufFile;

class WeightPager {
 public:
  // `weights` must be views into `file`'s mapping (ModelWeights::from_gguf).
  WeightPager(const GgufFile& file, const ModelWeights& weights);

  void prefetch_layer(int layer) const;
  void release_layer(int layer) const;
  void prefetch_output_rows(int64_t begin, int64_t end) const;
  void release_output_rows(int64_t begin, int64_t end) const;
  // The embedding rows a pass looked up (when the table is not also the output head).
  void release_embedding() const;
  // The most bytes one layer's matrices take: what a pass holds of the weights at a time,
  // besides a tile of the head.
  uint64_t largest_layer_bytes() const;
  // The bytes of a layer's matrices (what prefetch_layer reads).
  static uint64_t layer_bytes(const LayerWeights& layer);

 private:
  const GgufFile& file_;
  const ModelWeights& weights_;
};

}  // namespace flashlm
