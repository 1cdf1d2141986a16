// The FFN served from a .flm file under a memory plan: dense (all bundles in DRAM), naive (every
// bundle read from flash every token), hybrid (a share resident, the rest read), mmap (the page
// cache decides). Every mode computes with the same SparseFfn over bundles, so all produce the
// same tokens; they differ only in where the bundles come from and what that costs.
#pragma once

#include <memory>
#include <vector>

#include "flash/flash_layout.h"
#include "flash/io_engine.h"
#include "flash/memory_plan.h"
#include "model/feed_forward.h"
#include "sparse/sparse_ffn.h"

namespace flashlm {

// Where one token's time and bytes went, summed over calls (the paper's breakdown).
struct FlashStats {
  double io_seconds = 0;       // waiting for flash reads
  double memory_seconds = 0;   // managing DRAM copies of bundles
  double compute_seconds = 0;  // the FFN arithmetic
  uint64_t bytes_read = 0;     // from flash
  uint64_t read_requests = 0;
  uint64_t neurons_computed = 0;
};

class FlashFeedForward : public FeedForward {
 public:
  FlashFeedForward(const FlashModelFile& file, const ModelConfig& config, const MemoryPlan& plan,
                   IoBackend backend, ThreadPool& pool);
  ~FlashFeedForward() override;

  void forward(const FfnStep& step, const float* x, float* out) override;
  // dense: 1; hybrid: its resident first neurons (a resident-only step computes them alone);
  // naive and mmap: 0.
  double resident_share() const override;

  // Per-layer activation thresholds (see sparse/sparsity.h); empty: every neuron counts.
  void set_thresholds(std::vector<float> thresholds);
  // act(gate . x) of every neuron of `layer` for one token. Dense and mmap modes: any layer;
  // naive and hybrid: the layer of the last forward() call, whose bundles are still in DRAM.
  void activations(int layer, const float* x, float* out);

  const FlashStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }
  const IoEngine& io() const { return *io_; }

 private:
  // Reads bytes [begin, end) of `layer`'s bundles into `buffer`, widened to the O_DIRECT
  // alignment; returns where byte `begin` landed.
  const uint8_t* read_layer_range(int layer, uint64_t begin, uint64_t end, AlignedBuffer& buffer);

  const FlashModelFile& file_;
  const MemoryPlan plan_;
  ThreadPool& pool_;
  std::unique_ptr<IoEngine> io_;
  SparseFfn sparse_ffn_;
  AlignedBuffer resident_;  // dense: every layer; hybrid: the first neurons of every layer
  AlignedBuffer stream_;    // naive / hybrid: the layer being read
  void gather_bundles(int layer);
  std::vector<const uint8_t*> bundles_;  // this layer's bundles, handed to the FFN kernel
  int gathered_layer_ = -1;              // whose bundles bundles_ points at
  std::vector<const uint8_t*> resident_bundles_;  // a resident-only step's
  std::vector<float> thresholds_;
  void* map_ = nullptr;     // mmap mode: the whole file
  size_t map_bytes_ = 0;
  FlashStats stats_;
};

}  // namespace flashlm
