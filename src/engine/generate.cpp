#include "engine/generate.h"

#include <algorithm>
#include <chrono>
#include <vector>

namespace flashlm {

GenerationStats generate(Transformer& transformer, Sampler& sampler, const Tokenizer& tokenizer,
                         std::span<const int32_t> prompt, int max_tokens,
                         const std::function<bool(int32_t)>& on_token,
                         const std::function<bool()>& cancelled) {
  using Clock = std::chrono::steady_clock;
  GenerationStats stats;
  stats.prompt_tokens = static_cast<int>(prompt.size());
  const auto stop = [&] { return cancelled && (stats.cancelled = cancelled()); };
  auto start = Clock::now();
  std::span<const float> logits;
  const size_t batch = static_cast<size_t>(transformer.max_batch());
  for (size_t at = 0; at < prompt.size(); at += batch) {
    if (stop()) return stats;
    logits = transformer.forward(prompt.subspan(at, std::min(batch, prompt.size() - at)));
  }
  stats.prompt_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  start = Clock::now();
  for (int i = 0; i < max_tokens; ++i) {
    const int32_t token = sampler.sample(logits);
    if (tokenizer.is_end_of_generation(token)) {
      stats.stopped_by_eog = true;
      break;
    }
    ++stats.generated_tokens;
    if (!on_token(token)) break;
    if (i + 1 == max_tokens || transformer.n_past() >= transformer.context_size()) break;
    if (stop()) break;
    const int32_t next[1] = {token};
    logits = transformer.forward(next);
  }
  stats.decode_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return stats;
}

}  // namespace flashlm
