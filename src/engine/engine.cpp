#include "engine/engine.h"

#include <unistd.h>

#include <algorithm>

#include "common/error.h"
#include "common/process_memory.h"
#include "flash/probe.h"
#include "flash/read_plan.h"
#include "gguf/gguf.h"
#include "sparse/oracle_selector.h"

namespace flashlm {
namespace {

std::string sparse_path(const Model& model, const EngineOptions& options) {
  return options.sparse_file.empty() ? sparsity_file_for(model.file->path())
                                     : options.sparse_file;
}

SparsityProfile load_profile(const Model& model, const EngineOptions& options) {
  const std::string path = sparse_path(model, options);
  std::unique_ptr<GgufFile> file;
  try {
    file = GgufFile::open(path);
    file->drop_page_cache_on_close();
  } catch (const Error& e) {
    fail("{}\nsparsity thresholds come from a calibration run: flashlm calibrate -m {} -f TEXT",
         e.what(), model.file->path());
  }
  return SparsityProfile::from_gguf(*file, model.config.n_layers);
}

PlannerSettings planner_settings(const EngineOptions& options) {
  return options.device_profile.empty() ? default_device_profile().planner
                                        : load_device_profile(options.device_profile).planner;
}

ActivationPredictor load_predictor(const Model& model, const EngineOptions& options) {
  std::unique_ptr<GgufFile> file;
  try {
    file = GgufFile::open(sparse_path(model, options));
    file->drop_page_cache_on_close();
  } catch (const Error& e) {
    fail("{}\nthis sparse mode consults an activation predictor: flashlm calibrate -m {} -f TEXT, "
         "then flashlm train-predictor -m {} -f TEXT --sparsity {:.2f} (or --sparse-reads "
         "streamed, which needs neither)",
         e.what(), model.file->path(), model.file->path(), options.sparsity);
  }
  const ModelConfig& c = model.config;
  std::optional<ActivationPredictor> predictor =
      ActivationPredictor::from_gguf(*file, options.sparsity, c.n_layers, c.d_model, c.d_ff);
  if (!predictor) {
    std::string trained;
    for (float level : ActivationPredictor::levels_in(*file)) trained += fmt::format(" {:.2f}", level);
    fail("{} has no activation predictor for sparsity {:.2f} (trained for:{}); sparse mode needs "
         "one: run flashlm train-predictor first: flashlm train-predictor -m {} -f TEXT "
         "--sparsity {:.2f}",
         file->path(), options.sparsity, trained.empty() ? " none" : trained, model.file->path(),
         options.sparsity);
  }
  return std::move(*predictor);
}

// The KV cache is the one allocation sized by a request (-c) times the model's shape; checked
// in 64 bits against the machine's memory before it is made, it fails with numbers instead of
// an out-of-memory kill.
void check_kv_cache_fits(const ModelConfig& c, const EngineOptions& options, uint64_t kv_bytes) {
  if (options.context_size <= 0 || options.max_batch <= 0) return;  // the transformer says so
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return;
  const uint64_t memory = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
  if (kv_bytes > memory) {
    fail("a context of {} tokens needs a {:.1f} GiB KV cache ({} layers x {} values per token "
         "x 2), more than this machine's {:.1f} GiB of memory; pass a smaller -c",
         options.context_size, static_cast<double>(kv_bytes) / (1 << 30), c.n_layers, c.kv_dim(),
         static_cast<double>(memory) / (1 << 30));
  }
}

// The process's own memory before the first engine allocates anything: code and libraries,
// the tokenizer, the model's metadata pages, the heap so far. Measured once: a later engine in
// the same process (bench runs one per mode) starts from the same base.
uint64_t process_base_bytes() {
  static const uint64_t base = resident_set_bytes();
  return base;
}

// Everything but weights and FFN buffers that an engine with these options will allocate.
WorkingMemory working_memory(const Model& model, const EngineOptions& options, int threads,
                             uint64_t predictor_bytes) {
  const ModelConfig& c = model.config;
  WorkingMemory w;
  w.process = process_base_bytes();
  const TransformerOptions t = transformer_options(options, nullptr);
  w.kv_cache = static_cast<uint64_t>(t.sequences) *
               Transformer::kv_cache_bytes(c, t.context_size, t.kv_type_k, t.kv_type_v);
  // The forward pass's buffers, the FFN's (gate, up and hidden rows of a batch, the sparse
  // kernel's per-slice sums) and every linear layer's prepared inputs (int16 values and
  // per-group scales of the widest input).
  const uint64_t batch = static_cast<uint64_t>(std::max(options.max_batch, 1));
  const uint64_t widest = std::max({c.d_model, c.d_ff, c.q_dim()});
  w.activations = Transformer::scratch_bytes(c, t, threads) +
                  batch * c.d_ff * 3 * sizeof(float) +
                  static_cast<uint64_t>(threads + 1) * batch * c.d_model * sizeof(float) +
                  batch * widest * 3;
  w.predictors = predictor_bytes;
  w.samples = options.sample_bytes;
  w.draft_model = options.draft_model_bytes;
  for (const EngineOptions::Lora& l : options.lora) w.adapters += LoraAdapter::file_float_bytes(l.path);
  // Not countable: malloc's slack, thread stacks, code pages touched later, and the page cache
  // that a memory cgroup charges to the process besides its mapped pages (readahead around
  // the code and weights it maps, files it reads: 6-7 MiB measured under a limit, after the
  // page cache was dropped). Measured on the real models in every mode (cgroup peak against
  // this plan): 7-9 MiB plus 1% of what is counted.
  w.reserve = (9ull << 20) + (w.kv_cache + w.activations + w.predictors) / 64;
  return w;
}

// The mode to run when the user leaves it to us (--mode auto): dense when the budget holds the
// whole model, else sparse with streamed reads, which read a layer ahead while the previous
// one computes (at --sparsity 0 it computes every neuron: lossless). The alternative that
// costs no quality either is hybrid: both read every non-resident neuron each token; hybrid
// needs one layer buffer where streamed needs two, so it keeps a layer's worth more neurons
// resident and reads that much less, but it waits for each layer's read before computing.
// In alternating rounds on Qwen2.5-Coder-1.5B at 28%, 48% and 68% of its GGUF (README,
// "Choosing the split") streamed was as fast or faster at every budget: the compute it hides
// is worth more than the few percent hybrid reads less. The plan prints the comparison.
FfnMode choose_mode(const Model& model, const EngineOptions& options, uint64_t budget,
                    const WorkingMemory& working, std::string& reason) {
  if (!model.flash) {
    reason = "a GGUF model runs dense";
    return FfnMode::Dense;
  }
  if (options.mem_budget.empty()) {
    reason = "no --mem-budget: the whole model in DRAM";
    return FfnMode::Dense;
  }
  const FlashModelFile& flm = *model.flash;
  const MemoryPlan dense =
      plan_memory(flm, FfnMode::Dense, ~uint64_t{0} / 4, SparseReads::Planned, working);
  if (dense.fixed_bytes() <= budget) {
    reason = "dense: the budget holds the whole model";
    return FfnMode::Dense;
  }
  reason = fmt::format(
      "sparse with streamed reads: the budget holds {:.0f} of the {:.0f} MiB the model needs in "
      "DRAM, so the FFN streams from flash, each layer read while the previous one computes{}",
      budget / 1048576.0, dense.fixed_bytes() / 1048576.0,
      options.sparsity > 0 ? "" : "; every neuron computed (lossless; --sparsity S drops the "
                                  "weakest activations)");
  try {
    const MemoryPlan streamed = plan_memory(flm, FfnMode::Sparse, budget, SparseReads::Streamed,
                                            working);
    const MemoryPlan hybrid = plan_memory(flm, FfnMode::Hybrid, budget, SparseReads::Planned,
                                          working);
    const double read_streamed = (streamed.ffn_bytes - streamed.ffn_dram_bytes) / 1048576.0;
    const double read_hybrid = (hybrid.ffn_bytes - hybrid.ffn_dram_bytes) / 1048576.0;
    if (read_streamed > 0) {
      reason += fmt::format(
          "; hybrid would read {:.0f} MiB of FFN per token instead of {:.0f} ({:.1f}% less) but "
          "wait for each read, where streamed hides the compute behind them (measured as fast "
          "or faster: --mode hybrid to compare)",
          read_hybrid, read_streamed, 100.0 * (1.0 - read_hybrid / read_streamed));
    }
  } catch (const Error&) {
    // A budget too small for either: the plan that follows says so with its numbers.
  }
  return FfnMode::Sparse;
}

}  // namespace

TransformerOptions transformer_options(const EngineOptions& options, TokenEmbedding* embedding) {
  return TransformerOptions{.context_size = options.context_size / std::max(options.sequences, 1),
                            .max_batch = options.max_batch,
                            .embedding = embedding,
                            .kv_type_k = parse_kv_cache_type(options.cache_type_k),
                            .kv_type_v = parse_kv_cache_type(options.cache_type_v),
                            .all_logits = options.all_logits,
                            .logit_rows = options.logit_rows,
                            .sequences = std::max(options.sequences, 1)};
}

namespace {

// The draft model's options: the target's context, batch and KV cache types; nothing else.
EngineOptions draft_engine_options(const EngineOptions& target) {
  EngineOptions draft;
  draft.threads = target.threads;
  draft.context_size = target.context_size;
  draft.max_batch = target.max_batch;
  draft.cache_type_k = target.cache_type_k;
  draft.cache_type_v = target.cache_type_v;
  return draft;
}

}  // namespace

TransformerOptions draft_transformer_options(const EngineOptions& target) {
  return transformer_options(draft_engine_options(target), nullptr);
}

uint64_t draft_model_bytes(const Model& draft, const EngineOptions& target) {
  const EngineOptions options = draft_engine_options(target);
  const int threads = options.threads > 0 ? options.threads : ThreadPool::default_threads();
  const WorkingMemory w = working_memory(draft, options, threads, 0);
  uint64_t weights = 0;
  for (const GgufTensor& t : draft.file->tensors()) weights += t.bytes;
  return weights + w.kv_cache + w.activations + (w.kv_cache + w.activations) / 64;
}

MemoryPlan plan_engine_memory(const Model& model, const EngineOptions& options) {
  std::optional<ActivationPredictor> predictor;
  return Engine::plan(model, options, predictor);
}

MemoryPlan Engine::plan(const Model& model, const EngineOptions& options,
                        std::optional<ActivationPredictor>& predictor) {
  const int threads = options.threads > 0 ? options.threads : ThreadPool::default_threads();
  if (options.sparsity < 0 || options.sparsity >= 1) {
    fail("--sparsity must be in [0, 1), got {}", options.sparsity);
  }
  // What a percentage is a share of: the GGUF the user has.
  uint64_t base = 0;
  std::string base_what;
  if (!model.flash) {
    base = model.file->file_size();
    base_what = "GGUF model";
  } else if (model.flash->source_bytes() > 0) {
    base = model.flash->source_bytes();
    base_what = "source GGUF (recorded by convert)";
  } else {
    for (const GgufTensor& t : model.flash->gguf().tensors()) base += t.bytes;
    base += model.flash->bundle_region_bytes();
    base_what = ".flm's weights (converted before the source size was recorded: re-convert for "
                "a share of the GGUF)";
  }
  const bool budget_given = !options.mem_budget.empty();
  const uint64_t budget =
      budget_given ? parse_memory_budget(options.mem_budget, base) : ~uint64_t{0} / 4;
  WorkingMemory working = working_memory(model, options, threads, 0);

  std::string reason;
  const FfnMode mode = options.mode == "auto" ? choose_mode(model, options, budget, working, reason)
                                              : parse_ffn_mode(options.mode);
  MemoryPlan plan;
  if (!model.flash) {
    if (mode != FfnMode::Dense || options.sparsity > 0) {
      fail("{} streams or thresholds the FFN of a .flm file, and '{}' is a GGUF model; convert it "
           "first: flashlm convert -m {} -o MODEL.flm",
           options.sparsity > 0 ? "--sparsity" : options.mode + " mode", model.file->path(),
           model.file->path());
    }
    plan = plan_gguf_memory(*model.file, budget, working);
  } else {
    const FlashModelFile& flm = *model.flash;
    const bool sparse_mode = mode == FfnMode::Sparse || mode == FfnMode::SparseOracle;
    SparseReads reads = SparseReads::Planned;
    double coverage = 0;
    if (sparse_mode) {
      // The active share is 1 - sparsity by the thresholds' construction.
      coverage = expected_read_coverage(flm.d_ff(), flm.layout().stride, 1.0 - options.sparsity,
                                        planner_settings(options));
      reads = parse_sparse_reads(options.sparse_reads, coverage);
    }
    // Streamed reads compute every neuron they bring in and never ask the predictor, unless
    // told to compute only the predicted ones (or bench measures it).
    const bool needs_predictor =
        mode == FfnMode::Sparse &&
        (reads == SparseReads::Planned || !options.compute_read || options.measure_predictor);
    if (needs_predictor) {
      predictor = load_predictor(model, options);
      working = working_memory(model, options, threads, PredictorSelector::bytes_for(*predictor));
    }
    plan = plan_memory(flm, mode, budget, reads, working);
    plan.expected_read_coverage = coverage;
  }
  plan.budget_given = budget_given;
  plan.percent_base = base;
  plan.percent_base_what = base_what;
  plan.mode_reason = reason;
  return plan;
}

Engine::Engine(const Model& model, const EngineOptions& options)
    : model_(model), pool_(options.threads > 0 ? options.threads : ThreadPool::default_threads()) {
  adapters_.reserve(options.lora.size());
  for (const EngineOptions::Lora& l : options.lora) {
    adapters_.push_back(LoraAdapter::load(l.path, model.config.lora_shapes()));
    lora_.add(adapters_.back(), l.scale);
  }
  std::optional<ActivationPredictor> predictor;
  plan_ = plan(model, options, predictor);
  if (lora_.adapts_ffn() && model.flash) {
    fail("a LoRA adapter given adapts the FFN (ffn_gate, ffn_up or ffn_down), which flashlm "
         "applies only to a GGUF model's FFN so far, not to a .flm's neuron bundles ({} mode "
         "here): run the GGUF (-m MODEL.gguf), or use an adapter of the attention only",
         ffn_mode_name(plan_->mode));
  }
  const LoraSet* lora = lora_.empty() ? nullptr : &lora_;
  check_kv_cache_fits(model.config, options, plan_->working.kv_cache);
  const FfnMode mode = plan_->mode;
  const bool sparse_mode = mode == FfnMode::Sparse || mode == FfnMode::SparseOracle;
  FeedForward* ffn = nullptr;
  if (!model.flash) {
    dense_ffn_ = std::make_unique<DenseFeedForward>(model.config, model.weights, pool_, lora);
    ffn = dense_ffn_.get();
  } else {
    const FlashModelFile& flm = *model.flash;
    const SparseReads reads = plan_->sparse_reads;
    // No thresholds at --sparsity 0: every neuron counts (lossless), no calibration needed.
    std::vector<float> thresholds;
    if (options.sparsity > 0) thresholds = load_profile(model, options).at(options.sparsity);
    if (!sparse_mode) {
      flash_ffn_ = std::make_unique<FlashFeedForward>(flm, model.config, *plan_,
                                                      options.io_backend, pool_);
      flash_ffn_->set_thresholds(thresholds);
      ffn = flash_ffn_.get();
    } else {
      if (thresholds.empty()) thresholds.assign(flm.layers().size(), 0.0f);
      if (mode == FfnMode::SparseOracle || options.measure_predictor) {
        oracle_copy_ = std::make_unique<FlashFeedForward>(
            flm, model.config, plan_memory(flm, FfnMode::Dense, ~uint64_t{0} / 4),
            options.io_backend, pool_);
      }
      if (mode == FfnMode::Sparse && predictor) {
        auto selector = std::make_unique<PredictorSelector>(std::move(*predictor), pool_);
        if (options.measure_predictor) {
          measuring_oracle_ = std::make_unique<OracleSelector>(
              *oracle_copy_, thresholds, model.config.d_ff, model.config.d_model);
          selector->measure_against(measuring_oracle_.get());
        }
        predictor_selector_ = selector.get();
        selector_ = std::move(selector);
      } else if (mode == FfnMode::SparseOracle) {
        selector_ = std::make_unique<OracleSelector>(*oracle_copy_, thresholds,
                                                     model.config.d_ff, model.config.d_model);
      }
      if (reads == SparseReads::Streamed) {
        sparse_ffn_ = std::make_unique<StreamedSparseFfn>(flm, model.config, *plan_, thresholds,
                                                          selector_.get(), options.io_backend,
                                                          pool_);
      } else {
        sparse_ffn_ = std::make_unique<WindowedSparseFfn>(
            flm, model.config, *plan_, options.window, thresholds, *selector_,
            options.io_backend, planner_settings(options), pool_);
      }
      sparse_ffn_->set_overlap(options.overlap_io);
      sparse_ffn_->set_compute_read(options.compute_read);
      ffn = sparse_ffn_.get();
    }
  }
  sources_ = std::make_unique<FlashWeightSources>(*model.file, model.weights, *plan_,
                                                  options.io_backend, pool_);
  TransformerOptions t = transformer_options(options, sources_->embedding.get());
  t.weight_stream = sources_->streamed.get();
  t.lora = lora;
  transformer_ = std::make_unique<Transformer>(model.config, model.weights, *ffn, pool_, t);
  kv_caches_.push_back(&transformer_->kv_cache());
  for (int i = 1; i < t.sequences; ++i) {
    extra_caches_.push_back(
        std::make_unique<KvCache>(model.config, t.context_size, t.kv_type_k, t.kv_type_v));
    kv_caches_.push_back(extra_caches_.back().get());
  }
}

const StreamedWeightStats* Engine::weight_stream_stats() const {
  return sources_->streamed ? &sources_->streamed->stats() : nullptr;
}

Engine::~Engine() = default;

const FlashStats* Engine::flash_stats() const {
  if (flash_ffn_) return &flash_ffn_->stats();
  if (sparse_ffn_) return &sparse_ffn_->stats();
  return nullptr;
}

const SparseStats* Engine::sparse_stats() const {
  return sparse_ffn_ ? &sparse_ffn_->sparse_stats() : nullptr;
}

const PredictorQuality* Engine::predictor_quality() const {
  return predictor_selector_ && measuring_oracle_ ? &predictor_selector_->quality() : nullptr;
}

void Engine::reset_stats() {
  if (flash_ffn_) flash_ffn_->reset_stats();
  if (sparse_ffn_) sparse_ffn_->reset_stats();
  if (sources_->streamed) sources_->streamed->reset_stats();
}

}  // namespace flashlm
