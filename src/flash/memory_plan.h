// The DRAM budget: how many bytes of weights may sit in DRAM (resident part + FFN neurons),
// and how each mode spends it. Printed at start so the user sees what streams.
#pragma once

#include <cstdint>
#include <string>

namespace flashlm {

class FlashModelFile;
class GgufFile;
struct GgufTensor;

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

// How the sparse modes bring in the neurons a token needs.
enum class SparseReads {
  // The paper's plan: the predicted neurons not in the windowed cache, in coalesced reads.
  Planned,
  // The first neurons of each layer resident; the rest of the layer read whole, one layer
  // ahead, in large requests that run while the previous layer computes.
  Streamed,
};
const char* sparse_reads_name(SparseReads reads);
// When the predicted neurons' reads would bring in at least this share of a layer (page
// alignment and hole merging make dense-ish activity cover nearly every page), reading all of
// it a layer ahead costs at most a third more bytes, in fewer, larger requests, and hides the
// compute behind the reads: Streamed wins.
constexpr double kStreamedCoverage = 0.75;
// "planned", "streamed", or "auto": the better one for reads expected to cover `coverage` of
// each layer (read_plan.h: expected_read_coverage).
SparseReads parse_sparse_reads(const std::string& name, double coverage);

// The token embedding table when it is not also the output head (a separate output.weight),
// so that a token needs only its own row of it; null otherwise.
const GgufTensor* untied_embedding(const GgufFile& file);

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
  // Flash modes, when the token embedding is not the output head: its table stays on flash
  // and each token reads its row (flash/flash_embedding.h); not part of resident_bytes.
  uint64_t embedding_flash_bytes = 0;
  SparseReads sparse_reads = SparseReads::Planned;  // sparse modes
  // Sparse modes: the share of each layer that reads of the active neurons would bring in
  // (what "auto" chose sparse_reads from); 0 when unknown.
  double expected_read_coverage = 0;
  // hybrid and streamed sparse: bundles 0..n-1 of each layer stay in DRAM
  int resident_neurons_per_layer = 0;
  int cache_neurons_per_layer = 0;  // planned sparse: rows of each layer's neuron cache
  int d_ff = 0;
  int n_layers = 0;

  uint64_t dram_bytes() const { return resident_bytes + stream_buffer_bytes + ffn_dram_bytes; }
  std::string describe() const;
};

// Splits `budget` for `mode` (and, in the sparse modes, for `reads`); throws with the numbers
// when even the resident part and the stream buffers do not fit, or when dense mode does not
// fit entirely.
MemoryPlan plan_memory(const FlashModelFile& model, FfnMode mode, uint64_t budget,
                       SparseReads reads = SparseReads::Planned);

}  // namespace flashlm
