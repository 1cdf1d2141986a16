// One model ready to run: the thread pool, the FFN backend the options ask for (dense from the
// GGUF, or a flash mode of a .flm file under a memory budget) and the transformer over it.
// `run`, `perplexity`, `bench`, `serve` and `chat` all start from here.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "common/thread_pool.h"
#include "engine/model.h"
#include "flash/flash_ffn.h"
#include "flash/memory_plan.h"
#include "model/transformer.h"

namespace flashlm {

struct EngineOptions {
  int threads = 0;  // 0: all cores
  int context_size = 2048;
  int max_batch = 64;
  std::string mode = "dense";  // dense, naive, hybrid, mmap (the latter three need a .flm)
  std::string mem_budget;      // empty: no limit (dense needs all of it)
  IoBackend io_backend = IoBackend::Auto;
};

class Engine {
 public:
  Engine(const Model& model, const EngineOptions& options);

  Transformer& transformer() { return *transformer_; }
  ThreadPool& pool() { return pool_; }
  const Model& model() const { return model_; }
  // The flash FFN and its plan; null for a plain GGUF model in dense mode.
  FlashFeedForward* flash() { return flash_ffn_.get(); }
  const MemoryPlan* plan() const { return plan_ ? &*plan_ : nullptr; }

 private:
  const Model& model_;
  ThreadPool pool_;
  std::optional<MemoryPlan> plan_;
  std::unique_ptr<FeedForward> dense_ffn_;
  std::unique_ptr<FlashFeedForward> flash_ffn_;
  std::unique_ptr<Transformer> transformer_;
};

}  // namespace flashlm
