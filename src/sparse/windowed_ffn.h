// The paper's sparse FFN from flash: per token and layer,
//   predict the active neurons -> plan reads of those not cached -> start reading them
//   (O_DIRECT) -> compute the cached ones meanwhile -> put the read ones in the windowed
//   neuron cache -> compute them.
#pragma once

#include <memory>
#include <vector>

#include "flash/flash_ffn.h"
#include "flash/flash_layout.h"
#include "flash/io_engine.h"
#include "flash/memory_plan.h"
#include "flash/read_plan.h"
#include "model/feed_forward.h"
#include "sparse/neuron_cache.h"
#include "sparse/sparse_ffn.h"

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

class WindowedSparseFfn : public FeedForward {
 public:
  // thresholds[layer]: activations at most this large are treated as zero (as in dense
  // evaluation at the same sparsity), so a predicted-but-inactive neuron changes nothing.
  WindowedSparseFfn(const FlashModelFile& file, const ModelConfig& config, const MemoryPlan& plan,
                    int window, std::vector<float> thresholds, NeuronSelector& selector,
                    IoBackend backend, const PlannerSettings& planner, ThreadPool& pool);

  void forward(int layer, const float* x, int64_t n_tokens, float* out) override;

  const FlashStats& stats() const { return stats_; }
  const SparseStats& sparse_stats() const { return sparse_stats_; }
  void reset_stats();
  const IoEngine& io() const { return io_; }
  // Overlap (default): compute the cached neurons while the reads of the others are in
  // flight. Off: wait for the reads first, as the paper does (to measure what overlap buys).
  void set_overlap(bool overlap) { overlap_ = overlap; }
  // On (default): besides the predicted neurons, compute every neuron whose whole bundle the
  // layer's reads bring in (reads are whole pages, coalesced through small holes, so they
  // carry neighbours): a predictor's miss next to a read neuron costs nothing.
  void set_compute_read(bool on) { compute_read_ = on; }

 private:
  // Appends to bundles_ the staged bundles of neurons the reads of `plan` carry whole that
  // are not computed otherwise.
  void add_read_neighbours(const ReadPlan& plan, uint64_t layer_offset, size_t stride);

  const FlashModelFile& file_;
  const MemoryPlan plan_;
  std::vector<float> thresholds_;
  NeuronSelector& selector_;
  PlannerSettings planner_;
  IoEngine io_;
  SparseFfn sparse_ffn_;
  std::vector<NeuronCache> caches_;
  AlignedBuffer staging_;
  int64_t step_ = 0;
  bool overlap_ = true;
  bool compute_read_ = true;
  std::vector<int32_t> active_, to_load_, uncached_, to_read_, ready_;
  std::vector<ReadRequest> requests_;
  std::vector<float> loaded_out_;
  std::vector<const uint8_t*> bundles_;
  FlashStats stats_;
  SparseStats sparse_stats_;
};

}  // namespace flashlm
