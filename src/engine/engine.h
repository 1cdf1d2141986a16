// One model ready to run: the thread pool, the FFN backend the options ask for (dense from the
// GGUF, or a flash mode of a .flm file under a memory budget) and the transformer over it.
// `run`, `perplexity`, `bench`, `serve` and `chat` all start from here.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "common/thread_pool.h"
#include "flash/loaded_model.h"
#include "flash/flash_embedding.h"
#include "sparse/flash_ffn.h"
#include "flash/memory_plan.h"
#include "flash/streamed_weights.h"
#include "lora/lora.h"
#include "model/transformer.h"
#include "sparse/predictor_selector.h"
#include "sparse/sparsity.h"
#include "sparse/streamed_ffn.h"
#include "sparse/windowed_ffn.h"

namespace flashlm {

struct EngineOptions {
  int threads = 0;  // 0: all cores
  int context_size = 2048;
  int max_batch = 64;
  // KV cache storage of keys and values: f32, f16 or q8_0 (llama.cpp's -ctk / -ctv)
  std::string cache_type_k = "f16", cache_type_v = "f16";
  // Keep every token's logits of a step (perplexity); otherwise only the last token's.
  bool all_logits = false;
  int logit_rows = 0;  // with all_logits: tokens per step that keep them (0: max_batch)
  // Sequences that one pass may advance together, each with a KV cache of its own (the
  // server's --parallel); they share context_size as llama.cpp's slots do: each holds
  // context_size / sequences tokens, so the KV cache's memory does not grow with them.
  int sequences = 1;
  // auto, dense, naive, hybrid, mmap, sparse, sparse-oracle (all but dense need a .flm); auto:
  // dense when the budget holds the whole model, else sparse with streamed reads
  std::string mode = "auto";
  // Everything the process holds for the model (weights, buffers, KV cache, predictors, the
  // process itself): a size, or a percentage of the source GGUF; empty: no limit.
  std::string mem_budget;
  IoBackend io_backend = IoBackend::Auto;
  float sparsity = 0;       // share of neurons treated as inactive (thresholds from calibrate)
  std::string sparse_file;  // thresholds and predictors; default MODEL.flm.sparse
  int window = 4;           // tokens a neuron stays cached after its last use (sparse modes)
  // Sparse modes: "planned" (the paper's windowed cache and reads of the predicted neurons),
  // "streamed" (resident first neurons, the rest of each layer read a layer ahead) or "auto":
  // streamed where the predicted neurons' reads would cover most of each layer anyway.
  std::string sparse_reads = "auto";
  // `flashlm probe` output the read planner takes its request size and gap from; empty: the
  // built-in profile (fio on the project's machines)
  std::string device_profile;
  // sparse modes: compute the cached neurons while the others are read (false: read first)
  bool overlap_io = true;
  // Sparse modes: also compute the neurons that a layer's reads bring in besides the
  // predicted ones (their pages are read anyway); off = only the predicted neurons.
  bool compute_read = true;
  // sparse mode: also run the oracle beside the predictor to measure its recall and precision
  // (needs a dense copy of the FFN outside the budget: a measuring instrument for bench)
  bool measure_predictor = false;
  // What a tool running the model holds besides it (calibrate's and train-predictor's samples),
  // counted in the budget.
  uint64_t sample_bytes = 0;
  // Speculative decoding with a draft model (-md): what it holds beside this model (its
  // weights, KV cache and buffers: draft_model_bytes), counted in the budget.
  uint64_t draft_model_bytes = 0;
  // LoRA adapters (llama.cpp's format) applied beside the weights, each with its scale
  // (--lora FILE, --lora-scale FILE S). Attention adapters work in every mode; FFN adapters
  // need the FFN computed from the GGUF's matrices (dense mode of a GGUF model).
  struct Lora {
    std::string path;
    float scale = 1.0f;
  };
  std::vector<Lora> lora;
};

class Engine {
 public:
  Engine(const Model& model, const EngineOptions& options);
  // The plan an engine with these options would make (loading the predictor into `predictor`
  // when the mode consults one); throws when the budget cannot hold it.
  static MemoryPlan plan(const Model& model, const EngineOptions& options,
                         std::optional<ActivationPredictor>& predictor);
  ~Engine();

  Transformer& transformer() { return *transformer_; }
  // Sequence i's KV cache (i < EngineOptions::sequences); 0 is the transformer's own.
  KvCache& kv_cache(int i) { return *kv_caches_.at(static_cast<size_t>(i)); }
  int sequences() const { return static_cast<int>(kv_caches_.size()); }
  ThreadPool& pool() { return pool_; }
  const Model& model() const { return model_; }
  const MemoryPlan* plan() const { return plan_ ? &*plan_ : nullptr; }
  // Flash counters (null for a GGUF model in dense mode); sparse counters (sparse modes only).
  const FlashStats* flash_stats() const;
  // The attention and output-head reads, when the plan streams them; null otherwise.
  const StreamedWeightStats* weight_stream_stats() const;
  const SparseStats* sparse_stats() const;
  // The predictor's online recall and precision (sparse mode with measure_predictor), else null.
  const PredictorQuality* predictor_quality() const;
  void reset_stats();
  const LoraSet& lora() const { return lora_; }

 private:
  const Model& model_;
  ThreadPool pool_;
  std::vector<LoraAdapter> adapters_;
  LoraSet lora_;
  std::optional<MemoryPlan> plan_;
  std::unique_ptr<FeedForward> dense_ffn_;
  std::unique_ptr<FlashFeedForward> flash_ffn_;
  std::unique_ptr<FlashFeedForward> oracle_copy_;
  std::unique_ptr<NeuronSelector> selector_;
  std::unique_ptr<NeuronSelector> measuring_oracle_;
  PredictorSelector* predictor_selector_ = nullptr;
  std::unique_ptr<SparseFeedForward> sparse_ffn_;
  std::unique_ptr<FlashWeightSources> sources_;  // what the plan leaves on flash besides the FFN
  std::unique_ptr<Transformer> transformer_;
  std::vector<std::unique_ptr<KvCache>> extra_caches_;  // sequences 1..
  std::vector<KvCache*> kv_caches_;
};

// The memory plan of an engine with these options, without building it.
MemoryPlan plan_engine_memory(const Model& model, const EngineOptions& options);
TransformerOptions transformer_options(const EngineOptions& options, TokenEmbedding* embedding);

// A draft model (speculative decoding, speculative/model_drafter.h) runs dense from DRAM beside
// an engine with `target` options: with its context, batch size and KV cache types, and one row
// of logits. Its transformer's options, and everything it holds (its GGUF's weights, KV cache,
// buffers and their share of the reserve), which the target's plan counts.
TransformerOptions draft_transformer_options(const EngineOptions& target);
uint64_t draft_model_bytes(const Model& draft, const EngineOptions& target);

}  // namespace flashlm
