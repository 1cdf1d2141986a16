// Cuts generated text at the first stop sequence. Text arrives a token at a time, and a stop
// sequence can span tokens, so the tail that could still grow into one is held back: the
// client never sees any part of a stop sequence.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace flashlm {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  // Takes the next piece of text and returns what can be shown now. Once a stop sequence
  // appears, stopped() is true and nothing from it on is ever returned.
  std::string push(std::string_view text);
  // At the end of generation: the held-back tail, which turned out not to be a stop sequence.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace flashlm
