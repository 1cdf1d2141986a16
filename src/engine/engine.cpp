#include "engine/engine.h"

#include <unistd.h>

#include "common/error.h"
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
  } catch (const Error& e) {
    fail("{}\nsparsity thresholds come from a calibration run: flashlm calibrate -m {} -f TEXT",
         e.what(), model.file->path());
  }
  return SparsityProfile::from_gguf(*file, model.config.n_layers);
}

ActivationPredictor load_predictor(const Model& model, const EngineOptions& options) {
  auto file = GgufFile::open(sparse_path(model, options));
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
void check_kv_cache_fits(const ModelConfig& c, const EngineOptions& options) {
  if (options.context_size <= 0 || options.max_batch <= 0) return;  // the transformer says so
  const uint64_t kv_bytes = 2ull * static_cast<uint64_t>(c.n_layers) *
                            static_cast<uint64_t>(options.context_size) *
                            static_cast<uint64_t>(c.kv_dim()) * sizeof(float);
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

}  // namespace

Engine::Engine(const Model& model, const EngineOptions& options)
    : model_(model), pool_(options.threads > 0 ? options.threads : ThreadPool::default_threads()) {
  check_kv_cache_fits(model.config, options);
  const FfnMode mode = parse_ffn_mode(options.mode);
  if (options.sparsity < 0 || options.sparsity >= 1) {
    fail("--sparsity must be in [0, 1), got {}", options.sparsity);
  }
  const bool sparse_mode = mode == FfnMode::Sparse || mode == FfnMode::SparseOracle;
  FeedForward* ffn = nullptr;
  if (!model.flash) {
    if (mode != FfnMode::Dense || options.sparsity > 0) {
      fail("{} streams or thresholds the FFN of a .flm file, and '{}' is a GGUF model; convert it "
           "first: flashlm convert -m {} -o MODEL.flm",
           options.sparsity > 0 ? "--sparsity" : options.mode + " mode", model.file->path(),
           model.file->path());
    }
    dense_ffn_ = std::make_unique<DenseFeedForward>(model.config, model.weights, pool_);
    ffn = dense_ffn_.get();
  } else {
    const FlashModelFile& flm = *model.flash;
    uint64_t total = 0;
    for (const GgufTensor& t : flm.gguf().tensors()) total += t.bytes;
    total += flm.bundle_region_bytes();
    const uint64_t budget =
        options.mem_budget.empty() ? total * 2 : parse_memory_budget(options.mem_budget, total);
    const PlannerSettings planner = options.device_profile.empty()
                                        ? default_device_profile().planner
                                        : load_device_profile(options.device_profile).planner;
    SparseReads reads = SparseReads::Planned;
    double coverage = 0;
    if (sparse_mode) {
      // The active share is 1 - sparsity by the thresholds' construction.
      coverage =
          expected_read_coverage(flm.d_ff(), flm.layout().stride, 1.0 - options.sparsity, planner);
      reads = parse_sparse_reads(options.sparse_reads, coverage);
    }
    plan_ = plan_memory(flm, mode, budget, reads);
    plan_->expected_read_coverage = coverage;
    std::vector<float> thresholds;
    if (options.sparsity > 0 || sparse_mode) {
      thresholds = load_profile(model, options).at(options.sparsity);
    }
    if (!sparse_mode) {
      flash_ffn_ = std::make_unique<FlashFeedForward>(flm, model.config, *plan_,
                                                      options.io_backend, pool_);
      flash_ffn_->set_thresholds(thresholds);
      ffn = flash_ffn_.get();
    } else {
      if (mode == FfnMode::SparseOracle || options.measure_predictor) {
        oracle_copy_ = std::make_unique<FlashFeedForward>(
            flm, model.config, plan_memory(flm, FfnMode::Dense, ~uint64_t{0} / 4),
            options.io_backend, pool_);
      }
      if (mode == FfnMode::Sparse) {
        auto selector =
            std::make_unique<PredictorSelector>(load_predictor(model, options), pool_);
        if (options.measure_predictor) {
          measuring_oracle_ = std::make_unique<OracleSelector>(
              *oracle_copy_, thresholds, model.config.d_ff, model.config.d_model);
          selector->measure_against(measuring_oracle_.get());
        }
        predictor_selector_ = selector.get();
        selector_ = std::move(selector);
      } else {
        selector_ = std::make_unique<OracleSelector>(*oracle_copy_, thresholds,
                                                     model.config.d_ff, model.config.d_model);
      }
      if (reads == SparseReads::Streamed) {
        sparse_ffn_ = std::make_unique<StreamedSparseFfn>(flm, model.config, *plan_, thresholds,
                                                          *selector_, options.io_backend, pool_);
      } else {
        sparse_ffn_ = std::make_unique<WindowedSparseFfn>(flm, model.config, *plan_,
                                                          options.window, thresholds, *selector_,
                                                          options.io_backend, planner, pool_);
      }
      sparse_ffn_->set_overlap(options.overlap_io);
      sparse_ffn_->set_compute_read(options.compute_read);
      ffn = sparse_ffn_.get();
    }
  }
  if (plan_ && plan_->embedding_flash_bytes > 0) {
    embedding_ = std::make_unique<FlashEmbedding>(
        model.file->path(), *untied_embedding(*model.file), options.io_backend);
  }
  transformer_ = std::make_unique<Transformer>(
      model.config, model.weights, *ffn, pool_,
      TransformerOptions{.context_size = options.context_size,
                         .max_batch = options.max_batch,
                         .embedding = embedding_.get()});
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
}

}  // namespace flashlm
