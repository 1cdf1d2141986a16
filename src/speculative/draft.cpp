#include "speculative/draft.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace flashlm {

NgramDrafter::NgramDrafter(int min_n, int max_n) : min_n_(min_n), max_n_(max_n) {
  if (min_n < 1 || max_n < min_n) fail("ngram drafts need 1 <= min n <= max n");
}

std::vector<int32_t> NgramDrafter::draft(std::span<const int32_t> context, int max_tokens) {
  const int64_t len = static_cast<int64_t>(context.size());
  if (max_tokens <= 0) return {};
  for (int64_t n = std::min<int64_t>(max_n_, len - 1); n >= min_n_; --n) {
    const std::span<const int32_t> suffix = context.subspan(len - n);
    // The latest earlier occurrence: its continuation is the likeliest to repeat now.
    for (int64_t p = len - n - 1; p >= 0; --p) {
      if (!std::equal(suffix.begin(), suffix.end(), context.begin() + p)) continue;
      const int64_t begin = p + n;
      const int64_t end = std::min<int64_t>(begin + max_tokens, len);
      return {context.begin() + begin, context.begin() + end};
    }
  }
  return {};
}

DraftLength::DraftLength(int max_tokens) : max_(std::max(max_tokens, 1)) {}

void DraftLength::observe(int drafted, int accepted, double seconds, int asked,
                          double draft_seconds) {
  constexpr double kKeep = 0.97;  // the weight of the step before, against this one's 1
  if (drafted > 0) {
    // Drafts after the first rejection were never tried: they say nothing about alpha.
    tried_ = kKeep * tried_ + accepted + (accepted < drafted ? 1 : 0);
    kept_ = kKeep * kept_ + accepted;
  }
  const double s = 1 + drafted;
  n_ = kKeep * n_ + 1;
  s_ = kKeep * s_ + s;
  ss_ = kKeep * ss_ + s * s;
  t_ = kKeep * t_ + seconds;
  st_ = kKeep * st_ + s * seconds;
  asked_ = kKeep * asked_ + asked;
  draft_seconds_ = kKeep * draft_seconds_ + draft_seconds;
}

int DraftLength::next() const {
  const double alpha = std::clamp(kept_ / tried_, 0.01, 0.99);
  // The line through the passes seen; until their lengths vary enough to fit one, a token
  // added to a pass is taken to cost a tenth of the pass (flash: the reads dominate).
  double a = 1, b = 0.1;
  const double var = n_ * ss_ - s_ * s_;
  if (n_ >= 4 && var > 0.5 * n_ * n_) {
    b = std::max((n_ * st_ - s_ * t_) / var, 0.0);
    a = std::max((t_ - b * s_) / n_, 1e-6);
  }
  const double c = asked_ > 0 ? draft_seconds_ / asked_ : 0;
  int best = 1;
  double best_rate = 0, tokens = 1, power = 1;
  for (int k = 1; k <= max_; ++k) {
    power *= alpha;
    tokens += power;
    const double rate = tokens / (a + b * (1 + k) + c * k);
    if (rate > best_rate) {
      best_rate = rate;
      best = k;
    }
  }
  return best;
}

bool DraftTree::is_chain() const { return chain_length() == static_cast<int>(tokens.size()); }

int DraftTree::chain_length() const {
  int n = 0;
  while (n < static_cast<int>(parents.size()) && parents[n] == n - 1) ++n;
  return n;
}

DraftTree Drafter::draft_tree(std::span<const int32_t> context, int max_tokens, int max_total) {
  DraftTree tree{draft(context, std::min(max_tokens, max_total)), {}};
  for (size_t i = 0; i < tree.tokens.size(); ++i) tree.parents.push_back(static_cast<int32_t>(i) - 1);
  return tree;
}

TopToken top_token(std::span<const float> logits) {
  const auto best = std::max_element(logits.begin(), logits.end());
  // p(top) = 1 / sum(exp(logit - top)).
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - *best));
  return {static_cast<int32_t>(best - logits.begin()), 1.0 / sum};
}

std::unique_ptr<Drafter> make_drafter(const std::string& source) {
  if (source.empty() || source == "none") return nullptr;
  if (source == "ngram") return std::make_unique<NgramDrafter>();
  fail("--draft {}: not a draft source; supported: ngram (prompt lookup), self (the model's "
       "own DRAM-resident neurons), none, or a draft model's GGUF file (also -md MODEL.gguf)",
       source);
}

}  // namespace flashlm
