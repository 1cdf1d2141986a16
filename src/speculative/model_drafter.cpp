#include "speculative/model_drafter.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "common/error.h"

namespace flashlm {
namespace {

std::string file_name(const Model& model) {
  return std::filesystem::path(model.file->path()).filename().string();
}

}  // namespace

void check_same_vocabulary(const Model& draft, const Model& target) {
  const Tokenizer& d = draft.tokenizer;
  const Tokenizer& t = target.tokenizer;
  // What matters is the tokens that text can become: the same id must be the same string in
  // both. Padding is not compared: a vocabulary padded to the model's row count (Qwen2.5's
  // 151936 rows hold 151665 tokens; llama.cpp's converter lists the rest as "[PADn]" of type
  // UNUSED, another converter may leave them out) has entries that no text encodes to and
  // that the draft never proposes. A token in one vocabulary must be a token in the other.
  const int n = std::max(d.vocab_size(), t.vocab_size());
  for (int32_t id = 0; id < n; ++id) {
    const bool in_draft = !d.is_unused(id), in_target = !t.is_unused(id);
    if (!in_draft && !in_target) continue;
    if (in_draft && in_target && d.token_text(id) == t.token_text(id)) continue;
    const auto spelled = [id](const Tokenizer& v) {
      return v.is_unused(id) ? std::string("no token") : fmt::format("'{}'", v.token_text(id));
    };
    fail("the draft model {} ({} tokens) and the model {} ({} tokens) do not share a "
         "vocabulary: token {} is {} in the draft and {} in the model; speculative decoding "
         "needs a draft model with the same tokenizer (a smaller model of the same family, "
         "e.g. Qwen2.5-Coder-0.5B for Qwen2.5-Coder-1.5B), or --draft ngram",
         draft.file->path(), d.vocab_size(), target.file->path(), t.vocab_size(), id,
         spelled(d), spelled(t));
  }
}

std::unique_ptr<Model> check_draft_model(std::unique_ptr<Model> draft, const Model& target) {
  if (draft->flash) {
    fail("the draft model {} is a .flm file; a draft model runs dense from DRAM: pass its GGUF",
         draft->file->path());
  }
  check_same_vocabulary(*draft, target);
  return draft;
}

ModelDrafter::ModelDrafter(std::unique_ptr<Model> draft, const Model& target, ThreadPool& pool,
                           const TransformerOptions& options, float p_min)
    : model_(check_draft_model(std::move(draft), target)),
      ffn_(model_->config, model_->weights, pool),
      transformer_(model_->config, model_->weights, ffn_, pool, options),
      p_min_(p_min),
      draftable_(std::min(model_->config.vocab_size, target.config.vocab_size)) {}

std::string ModelDrafter::name() const { return "model " + file_name(*model_); }

std::span<const float> ModelDrafter::feed(std::span<const int32_t> tokens) {
  if (tokens.empty()) return {};  // all of it cached already (prefill only)
  const std::span<const float> logits = transformer_.forward(tokens);  // in batches itself
  cached_.insert(cached_.end(), tokens.begin(), tokens.end());
  return logits;
}

std::span<const float> ModelDrafter::catch_up(std::span<const int32_t> context, bool need_logits) {
  if (static_cast<int>(cached_.size()) != transformer_.n_past()) {
    // A pass that failed halfway left the cache in no known state.
    transformer_.truncate(0);
    cached_.clear();
  }
  const size_t common =
      std::mismatch(cached_.begin(), cached_.end(), context.begin(), context.end()).first -
      cached_.begin();
  // The logits after the last token exist only while feeding it: feed it again when needed.
  const size_t keep = need_logits ? std::min(common, context.size() - 1) : common;
  const std::span<const int32_t> rest = context.subspan(keep);
  // A token the draft model has no row for (the target sampled padding beyond the draft's
  // rows): nothing to draft on.
  for (int32_t token : rest) {
    if (token < 0 || token >= model_->config.vocab_size) return {};
  }
  if (keep < cached_.size()) {
    transformer_.truncate(static_cast<int>(keep));
    cached_.resize(keep);
  }
  return feed(rest);
}

void ModelDrafter::prefill(std::span<const int32_t> context) {
  if (context.size() > static_cast<size_t>(transformer_.context_size())) return;
  catch_up(context, /*need_logits=*/false);
}

std::vector<int32_t> ModelDrafter::draft(std::span<const int32_t> context, int max_tokens) {
  std::vector<int32_t> out;
  const int room = transformer_.context_size() - static_cast<int>(context.size());
  max_tokens = std::min(max_tokens, room);
  if (max_tokens <= 0 || context.empty()) return out;
  std::span<const float> logits = catch_up(context, /*need_logits=*/true);
  if (logits.empty()) return out;
  const Tokenizer& vocabulary = model_->tokenizer;
  for (;;) {
    const TopToken top = top_token(logits);
    if (top.probability < p_min_ || top.token >= draftable_ || vocabulary.is_unused(top.token)) {
      break;
    }
    out.push_back(top.token);
    if (static_cast<int>(out.size()) == max_tokens) break;
    logits = feed(std::span(&top.token, 1));
  }
  return out;
}

}  // namespace flashlm
