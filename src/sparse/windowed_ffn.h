// The paper's sparse FFN from flash: per token and layer,
//   predict the active neurons -> plan reads of those not cached -> start reading them
//   (O_DIRECT) -> compute the cached ones meanwhile -> put the read ones in the windowed
//   neuron cache -> compute them.
#pragma once

#include <memory>
#include <vector>

#include "sparse/flash_ffn.h"
#include "flash/flash_layout.h"
#include "flash/io_engine.h"
#include "flash/memory_plan.h"
#include "flash/read_plan.h"
#include "sparse/neuron_cache.h"
#include "sparse/sparse_feed_forward.h"
#include "sparse/sparse_ffn.h"

namespace flashlm {

// Overlap: the cached neurons are computed while the others are read (off: the reads are
// waited for first, as the paper does). Reads are whole pages, coalesced through small holes,
// so they carry neighbours, which compute_read computes too.
class WindowedSparseFfn : public SparseFeedForward {
 public:
  // thresholds[layer]: activations at most this large are treated as zero (as in dense
  // evaluation at the same sparsity), so a predicted-but-inactive neuron changes nothing.
  WindowedSparseFfn(const FlashModelFile& file, const ModelConfig& config, const MemoryPlan& plan,
                    int window, std::vector<float> thresholds, NeuronSelector& selector,
                    IoBackend backend, const PlannerSettings& planner, ThreadPool& pool);

  void forward(const FfnStep& step, const float* x, float* out) override;
  // Which neurons are cached changes every token: no fixed resident part to draft with.
  double resident_share() const override { return 0.0; }

  const IoEngine& io() const { return io_; }

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
  std::vector<int32_t> active_, to_load_, uncached_, to_read_, ready_;
  std::vector<ReadRequest> requests_;
  std::vector<float> loaded_out_;
  std::vector<const uint8_t*> bundles_;
};

}  // namespace flashlm
