#include "engine/engine.h"

#include "common/error.h"
#include "gguf/gguf.h"
#include "sparse/oracle_selector.h"

namespace flashlm {
namespace {

SparsityProfile load_profile(const Model& model, const EngineOptions& options) {
  const std::string path = options.sparse_file.empty()
                               ? sparsity_file_for(model.file->path())
                               : options.sparse_file;
  std::unique_ptr<GgufFile> file;
  try {
    file = GgufFile::open(path);
  } catch (const Error& e) {
    fail("{}\nsparsity thresholds come from a calibration run: flashlm calibrate -m {} -f TEXT",
         e.what(), model.file->path());
  }
  return SparsityProfile::from_gguf(*file, model.config.n_layers);
}

}  // namespace

Engine::Engine(const Model& model, const EngineOptions& options)
    : model_(model), pool_(options.threads > 0 ? options.threads : ThreadPool::default_threads()) {
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
    plan_ = plan_memory(flm, mode, budget);
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
      if (mode == FfnMode::Sparse) {
        fail("sparse mode needs trained predictors, which this build cannot load yet; use "
             "sparse-oracle to measure the I/O path with the true active neurons");
      }
      oracle_copy_ = std::make_unique<FlashFeedForward>(
          flm, model.config, plan_memory(flm, FfnMode::Dense, ~uint64_t{0} / 4),
          options.io_backend, pool_);
      selector_ = std::make_unique<OracleSelector>(*oracle_copy_, thresholds, model.config.d_ff,
                                                   model.config.d_model);
      sparse_ffn_ = std::make_unique<WindowedSparseFfn>(
          flm, model.config, *plan_, options.window, thresholds, *selector_, options.io_backend,
          PlannerSettings{}, pool_);
      ffn = sparse_ffn_.get();
    }
  }
  transformer_ = std::make_unique<Transformer>(
      model.config, model.weights, *ffn, pool_,
      TransformerOptions{.context_size = options.context_size, .max_batch = options.max_batch});
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

void Engine::reset_stats() {
  if (flash_ffn_) flash_ffn_->reset_stats();
  if (sparse_ffn_) sparse_ffn_->reset_stats();
}

}  // namespace flashlm
