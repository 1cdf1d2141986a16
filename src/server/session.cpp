#include "server/session.h"

#include <algorithm>

#include "common/error.h"
#include "server/stop_matcher.h"

namespace flashlm {

SessionResult Session::run(const SessionRequest& request, const TextCallback& on_text) {
  const std::span<const int32_t> prompt = request.prompt;
  if (prompt.empty()) fail("cannot generate from an empty prompt");
  Transformer& transformer = engine_.transformer();
  // The last prompt token is always processed again: its logits pick the first new token.
  const size_t common =
      std::mismatch(cached_.begin(), cached_.end(), prompt.begin(), prompt.end()).first -
      cached_.begin();
  const size_t keep = std::min(common, prompt.size() - 1);
  transformer.truncate(static_cast<int>(keep));
  cached_.resize(keep);

  Sampler sampler(request.sampling);
  StreamDecoder decoder(tokenizer_);
  StopMatcher matcher(request.stop);
  std::vector<int32_t> generated;
  bool cancelled = false;
  SessionResult result;
  DecodeOptions draft = draft_;
  draft.history = prompt.first(keep);
  try {
    result.stats = generate(transformer, sampler, tokenizer_, prompt.subspan(keep),
                            request.max_tokens, [&](int32_t token) {
                              generated.push_back(token);
                              if (!on_text(matcher.push(decoder.push(token)))) {
                                cancelled = true;
                                return false;
                              }
                              return !matcher.stopped();
                            },
                            request.cancelled, draft);
    cancelled = cancelled || result.stats.cancelled;
  } catch (...) {
    // A pass that failed halfway leaves the cache in no known state.
    transformer.truncate(0);
    cached_.clear();
    throw;
  }
  cached_.assign(prompt.begin(), prompt.end());
  cached_.insert(cached_.end(), generated.begin(), generated.end());
  cached_.resize(transformer.n_past());  // the last sampled token was never fed back

  if (!cancelled && !matcher.stopped()) {
    std::string tail = matcher.push(decoder.flush());
    tail += matcher.flush();
    if (!tail.empty()) on_text(tail);  // nothing is left to cancel, so the answer is ignored
  }
  result.finish = cancelled                                          ? Finish::Cancelled
                  : matcher.stopped() || result.stats.stopped_by_eog ? Finish::Stop
                                                                     : Finish::Length;
  result.prompt_tokens = static_cast<int>(prompt.size());
  result.reused_tokens = static_cast<int>(keep);
  result.completion_tokens = static_cast<int>(generated.size());
  return result;
}

}  // namespace flashlm
