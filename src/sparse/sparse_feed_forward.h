// What the two sparse FFNs from flash share: the selector that says which neurons a token
// needs, the counters bench reports, and the switches that measure what each technique buys.
//   WindowedSparseFfn (windowed_ffn.h): the paper's plan, for activity sparse enough that
//     the reads of the predicted neurons leave holes worth skipping.
//   StreamedSparseFfn (streamed_ffn.h): for activity so dense that those reads would bring in
//     most of every layer anyway.
#pragma once

#include <cstdint>
#include <vector>

#include "sparse/flash_ffn.h"
#include "model/feed_forward.h"

namespace flashlm {

// Decides which neurons of a layer the next tokens need.
class NeuronSelector {
 public:
  virtual ~NeuronSelector() = default;
  // Sorted, duplicate-free ids of the neurons needed by any of the n_tokens inputs x.
  virtual void select(int layer, const float* x, int64_t n_tokens,
                      std::vector<int32_t>& active) = 0;
};

struct SparseStats {
  double select_seconds = 0;  // predictor (or oracle) time
  uint64_t neurons_active = 0;
  uint64_t neurons_loaded = 0;
  uint64_t neurons_read_extra = 0;  // computed because a read brought them in, not predicted
  uint64_t cache_hits = 0;
  uint64_t layer_steps = 0;  // (layer, token) pairs
};

class SparseFeedForward : public FeedForward {
 public:
  const FlashStats& stats() const { return stats_; }
  const SparseStats& sparse_stats() const { return sparse_stats_; }
  void reset_stats() {
    stats_ = {};
    sparse_stats_ = {};
  }
  // Overlap (default): reads run while something is computed. Off: every read is waited for
  // where it is issued (to measure what overlap buys).
  void set_overlap(bool overlap) { overlap_ = overlap; }
  // On (default): besides the predicted neurons, compute every neuron whose whole bundle the
  // layer's reads bring in; a predictor's miss among them costs nothing. Off: only the
  // predicted ones.
  void set_compute_read(bool on) { compute_read_ = on; }

 protected:
  FlashStats stats_;
  SparseStats sparse_stats_;
  bool overlap_ = true;
  bool compute_read_ = true;
};

}  // namespace flashlm
