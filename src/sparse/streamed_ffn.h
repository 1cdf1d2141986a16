// The sparse FFN from flash for dense-ish activity, per token and layer:
//   wait for this layer's streamed part (its read started while the previous layer computed)
//   -> start reading the next layer's -> compute every neuron under the thresholds (or, with
//   predicted-only, the neurons the predictor selects).
//
// Gated models such as SmolLM2 and Qwen2.5 keep about half of their neurons active per token
// at the sparsity that holds their quality, spread over the layer. Bundles are smaller than a
// page and a hole is only worth skipping when it is longer than a request costs, so the reads
// of the predicted neurons bring in nearly every page anyway, and the paper's windowed cache
// (whose neurons sit scattered among the ones read) saves almost none of them. Here the budget
// instead keeps the first neurons of each layer resident, a contiguous range no read touches,
// and the rest of the layer arrives in a few large requests that run while the previous layer
// (and this layer's attention) computes, so the token pays for the bytes and not for the
// requests or the compute. With every neuron in DRAM the predictor has nothing left to save
// (see forward()).
#pragma once

#include <vector>

#include "flash/flash_layout.h"
#include "flash/io_engine.h"
#include "flash/memory_plan.h"
#include "sparse/sparse_feed_forward.h"
#include "sparse/sparse_ffn.h"

namespace flashlm {

class StreamedSparseFfn : public SparseFeedForward {
 public:
  // plan: a sparse mode's plan with SparseReads::Streamed. thresholds[layer]: activations at
  // most this large are treated as zero, as in dense evaluation at the same sparsity (0:
  // every neuron counts). selector: consulted only with set_compute_read(false); may be null
  // otherwise.
  StreamedSparseFfn(const FlashModelFile& file, const ModelConfig& config, const MemoryPlan& plan,
                    std::vector<float> thresholds, NeuronSelector* selector, IoBackend backend,
                    ThreadPool& pool);
  ~StreamedSparseFfn() override;  // waits for a read-ahead still in flight

  void forward(const FfnStep& step, const float* x, float* out) override;
  // The resident first neurons' share of each layer: what a resident-only step computes.
  double resident_share() const override;

  const IoEngine& io() const { return io_; }

 private:
  // Starts reading the streamed part of `layer` into the buffer not being computed from.
  void start_reading(int layer);
  // The bundle of the first streamed neuron of `layer`, the others following it; waits for
  // its read, or reads it now if it was not started (the first layer computed, --no-overlap).
  const uint8_t* streamed_part(int layer);

  const FlashModelFile& file_;
  const MemoryPlan plan_;
  const int resident_neurons_;  // per layer: neurons [0, resident_neurons_) stay in DRAM
  std::vector<float> thresholds_;
  NeuronSelector* selector_;
  AlignedBuffer resident_;    // every layer's resident neurons, layer after layer
  AlignedBuffer buffers_[2];  // one layer's streamed part being computed, the next arriving
  IoEngine io_;
  SparseFfn sparse_ffn_;
  int computing_buffer_ = 0;
  int reading_layer_ = -1;        // the layer whose streamed part is in flight, or -1
  uint64_t first_neuron_at_ = 0;  // where its first streamed neuron lands in its buffer
  uint64_t request_bytes_ = 0;
  std::vector<ReadRequest> requests_;
  std::vector<int32_t> active_;
  std::vector<const uint8_t*> bundles_;
};

}  // namespace flashlm
