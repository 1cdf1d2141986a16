// The DRAM budget: how many bytes of weights may sit in DRAM (resident part + FFN neurons),
// and how each mode spends it. Printed at start so the user sees what streams.
#pragma once

#include <cstdint>
#include <string>

namespace flashlm {

class FlashModelFile;

enum class FfnMode {
  Dense,   // every bundle in DRAM: the reference
  Naive,   // every bundle read from flash for every token
  Hybrid,  // a fixed share of each layer's bundles resident, the rest read every token
  Mmap,    // bundles memory-mapped; the OS page cache decides what stays
  Sparse,  // predicted-active neurons read into a windowed DRAM cache (the paper)
  SparseOracle,  // as Sparse, with the true active neurons instead of predicted ones
};
FfnMode parse_ffn_mode(const std::string& name);
const char* ffn_mode_name(FfnMode mode);

// "50%" (of the model's weight bytes), "300M", "1.5G", "4096K" or a plain number of bytes.
uint64_t parse_memory_budget(const std::string& text, uint64_t model_bytes);

struct MemoryPlan {
  FfnMode mode = FfnMode::Dense;
  uint64_t budget = 0;             // bytes of weights allowed in DRAM
  uint64_t model_bytes = 0;        // resident part + every bundle
  uint64_t resident_bytes = 0;     // embeddings, attention, norms, output head
  uint64_t ffn_bytes = 0;          // every bundle of every layer
  uint64_t stream_buffer_bytes = 0;  // buffers that flash reads land in
  uint64_t ffn_dram_bytes = 0;     // bundles kept in DRAM
  int resident_neurons_per_layer = 0;  // hybrid: bundles 0..n-1 of each layer stay in DRAM
  int cache_neurons_per_layer = 0;     // sparse: rows of each layer's neuron cache
  int d_ff = 0;
  int n_layers = 0;

  uint64_t dram_bytes() const { return resident_bytes + stream_buffer_bytes + ffn_dram_bytes; }
  std::string describe() const;
};

// Splits `budget` for `mode`; throws with the numbers when even the resident part and the
// stream buffers do not fit, or when dense mode does not fit entirely.
MemoryPlan plan_memory(const FlashModelFile& model, FfnMode mode, uint64_t budget);

}  // namespace flashlm
