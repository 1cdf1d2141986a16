// Generation on the engine's one KV cache, keeping the cache from one call to the next: a
// prompt that starts with the tokens of the previous prompt and its answer processes only
// what is new. Chat clients resend the whole conversation every turn, so a turn costs the
// length of the new message rather than of the conversation.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine.h"
#include "engine/generate.h"
#include "sampling/sampler.h"
#include "tokenizer/tokenizer.h"

namespace flashlm {

struct SessionRequest {
  std::span<const int32_t> prompt;  // the whole prompt, not only what is new
  int max_tokens = 0;
  SamplingParams sampling;
  std::vector<std::string> stop;  // the answer ends before the first of these
  // Asked before each step, the prompt's batches included: true abandons the request
  // (Finish::Cancelled) within one batch, where on_text is asked only after each token.
  std::function<bool()> cancelled;
};

enum class Finish {
  Stop,       // end of generation token or stop sequence
  Length,     // max_tokens, or the context is full
  Cancelled,  // on_text returned false, or the request's `cancelled` true
};

struct SessionResult {
  Finish finish = Finish::Length;
  int prompt_tokens = 0;
  int reused_tokens = 0;  // prompt tokens whose KV entries were already in the cache
  int completion_tokens = 0;
  GenerationStats stats;
};

// Called after every generated token with the text it completes (stop sequences cut out;
// empty while a character or a possible stop sequence is incomplete). Returns false to cancel.
using TextCallback = std::function<bool(std::string_view text)>;

class Session {
 public:
  // `draft`: speculative decoding for every request (its drafter must outlive the session).
  Session(Engine& engine, const Tokenizer& tokenizer, DecodeOptions draft = {})
      : engine_(engine), tokenizer_(tokenizer), draft_(draft) {}

  SessionResult run(const SessionRequest& request, const TextCallback& on_text);

 private:
  Engine& engine_;
  const Tokenizer& tokenizer_;
  DecodeOptions draft_;
  std::vector<int32_t> cached_;  // the tokens whose keys and values the KV cache holds
};

}  // namespace flashlm
