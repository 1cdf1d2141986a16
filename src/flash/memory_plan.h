// The memory budget: everything the process holds for a model (resident weights, FFN neurons
// and stream buffers, predictors, KV cache, working buffers, the process itself), and how each
// mode spends it. Printed at start so the user sees what streams and where the bytes go.
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

// "50%" (of `model_bytes`), "300M", "1.5G", "4096K" or a plain number of bytes.
uint64_t parse_memory_budget(const std::string& text, uint64_t model_bytes);

// What the process holds besides the model's weights and the FFN's buffers; the engine fills
// it in before it allocates any of it (engine/memory_needs.h), so the plan can count it.
struct WorkingMemory {
  // Measured when the first engine starts: code and libraries, the tokenizer, the model's
  // metadata, the heap so far.
  uint64_t process = 0;
  uint64_t kv_cache = 0;
  uint64_t activations = 0;  // the forward pass's buffers: hidden states, logits, scratch
  uint64_t predictors = 0;   // sparse mode's activation predictors, when it consults them
  // calibrate and train-predictor: the activation samples they gather (and the training state)
  uint64_t samples = 0;
  uint64_t adapters = 0;  // LoRA adapters applied (--lora), as floats
  // Speculative decoding's draft model (-md), dense in DRAM: weights, KV cache, buffers.
  uint64_t draft_model = 0;
  // What cannot be counted exactly (allocator slack, thread stacks, pages of code touched
  // later): reserved.
  uint64_t reserve = 0;
  uint64_t total() const {
    return process + kv_cache + activations + predictors + samples + adapters + draft_model +
           reserve;
  }
};

struct MemoryPlan {
  FfnMode mode = FfnMode::Dense;
  uint64_t budget = 0;             // bytes the whole process may hold for the model
  bool budget_given = false;       // false: no --mem-budget (budget is then unbounded)
  // What a percentage budget is a share of: the source GGUF's size, recorded by convert (or,
  // for older .flm files, the .flm's own weight bytes).
  uint64_t percent_base = 0;
  std::string percent_base_what;
  std::string mode_reason;         // why this mode (and read strategy) was chosen, if it was
  uint64_t model_bytes = 0;        // resident part + every bundle
  uint64_t resident_bytes = 0;     // embeddings, attention, norms, output head
  uint64_t ffn_bytes = 0;          // every bundle of every layer
  uint64_t stream_buffer_bytes = 0;  // buffers that flash reads land in
  uint64_t ffn_dram_bytes = 0;     // bundles kept in DRAM
  // Flash modes, when the token embedding is not the output head: its table stays on flash
  // and each token reads its row (flash/flash_embedding.h); not part of resident_bytes.
  uint64_t embedding_flash_bytes = 0;
  // Budgets too small for them in DRAM: the attention matrices of the last
  // streamed_attention_layers layers and (output_streamed) the output head stay on flash too,
  // read a step ahead of the compute every token (flash/streamed_weights.h); their bytes are
  // not part of resident_bytes, their buffers are part of stream_buffer_bytes.
  int streamed_attention_layers = 0;
  bool output_streamed = false;
  uint64_t attention_flash_bytes = 0, output_flash_bytes = 0;
  bool streams_weights() const { return streamed_attention_layers > 0 || output_streamed; }
  WorkingMemory working;
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
  // Everything but the FFN neurons the budget buys: what any budget must hold for this mode.
  uint64_t fixed_bytes() const {
    return resident_bytes + stream_buffer_bytes + (mode == FfnMode::Dense ? ffn_dram_bytes : 0) +
           working.total();
  }
  // What the process will hold: weights, buffers and working memory; in mmap mode the page
  // cache takes the rest of the budget.
  uint64_t total_bytes() const {
    if (mode == FfnMode::Mmap && budget_given) return budget;
    return dram_bytes() + working.total();
  }
  std::string describe() const;
};

// One layer's FFN bundles plus alignment at both ends: what a buffer reading one layer holds.
uint64_t layer_buffer_bytes(const FlashModelFile& model);

// Splits `budget` for `mode` (and, in the sparse modes, for `reads`) after `working`; throws
// with the numbers and what to change when even the fixed part does not fit, or when dense
// mode does not fit entirely.
MemoryPlan plan_memory(const FlashModelFile& model, FfnMode mode, uint64_t budget,
                       SparseReads reads = SparseReads::Planned, const WorkingMemory& working = {});
// A plain GGUF model runs dense with every weight mapped in DRAM.
MemoryPlan plan_gguf_memory(const GgufFile& model, uint64_t budget, const WorkingMemory& working);

}  // namespace flashlm
