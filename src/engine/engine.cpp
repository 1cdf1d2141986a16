#include "engine/engine.h"

#include "common/error.h"

namespace flashlm {

Engine::Engine(const Model& model, const EngineOptions& options)
    : model_(model), pool_(options.threads > 0 ? options.threads : ThreadPool::default_threads()) {
  const FfnMode mode = parse_ffn_mode(options.mode);
  FeedForward* ffn = nullptr;
  if (!model.flash) {
    if (mode != FfnMode::Dense) {
      fail("{} mode streams the FFN from a .flm file, and '{}' is a GGUF model; convert it first: "
           "flashlm convert -m {} -o MODEL.flm",
           options.mode, model.file->path(), model.file->path());
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
    flash_ffn_ = std::make_unique<FlashFeedForward>(flm, model.config, *plan_,
                                                    options.io_backend, pool_);
    ffn = flash_ffn_.get();
  }
  transformer_ = std::make_unique<Transformer>(
      model.config, model.weights, *ffn, pool_,
      TransformerOptions{.context_size = options.context_size, .max_batch = options.max_batch});
}

}  // namespace flashlm
