// Continuous batching, the server's --parallel N: up to N requests generate together, and each
// step is ONE forward pass that advances all of them (a token each, or a chunk of a prompt).
// On flash that pass reads every layer's non-resident FFN once for all of them, so N requests
// cost about one request's reads per token; each has a KV cache of its own. A request joins
// at the next step and leaves when it is done; up to max_waiting more wait for a free slot and
// further ones are turned away (the caller answers 503).
//
// A request's tokens are exactly what it gets alone (Session, or `flashlm run`): every row of
// a pass is computed on its own, bit for bit as in a pass of its sequence alone. (Not in the
// planned sparse reads, whose neuron selection is the union over the pass: see the README.)
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "server/session.h"
#include "tokenizer/tokenizer.h"

namespace flashlm {

class BatchGenerator {
 public:
  // engine must have been built with EngineOptions::sequences = the slots wanted.
  BatchGenerator(Engine& engine, const Tokenizer& tokenizer, int max_waiting);
  ~BatchGenerator();  // cancels what runs and waits for the worker
  BatchGenerator(const BatchGenerator&) = delete;
  BatchGenerator& operator=(const BatchGenerator&) = delete;

  struct Job;
  // A request's place: in a slot or waiting for one. Dropped without wait(), it is cancelled.
  class Ticket {
   public:
    Ticket(Ticket&&) noexcept = default;
    Ticket& operator=(Ticket&&) noexcept = default;
    ~Ticket();

   private:
    friend class BatchGenerator;
    explicit Ticket(std::shared_ptr<Job> job) : job_(std::move(job)) {}
    std::shared_ptr<Job> job_;
  };
  // Queues `request` (copied); nothing when the slots and the queue are full, or closed.
  std::optional<Ticket> submit(const SessionRequest& request);
  // Blocks until the request is done, calling on_text (on this thread) with each piece of text
  // as Session::run does. A request the generator was closed on ends Cancelled. Errors of a
  // pass are thrown here (every request of that pass gets them).
  SessionResult wait(Ticket ticket, const TextCallback& on_text);
  // Turns away waiting and later requests and cancels the running ones at their next step.
  void close();

  int waiting() const;
  int running() const;
  int slots() const;

 private:
  struct Slot;
  void work();
  void admit();                   // waiting jobs into free slots (under mutex_)
  bool step();                    // one pass over the running slots; false when idle
  void finish(Slot& slot, Finish finish);
  void fail_all(std::exception_ptr error);

  Engine& engine_;
  const Tokenizer& tokenizer_;
  const int max_waiting_;
  std::vector<Slot> slots_;
  mutable std::mutex mutex_;
  std::condition_variable work_changed_;
  std::deque<std::shared_ptr<Job>> waiting_;
  int running_ = 0;
  bool closed_ = false;
  std::jthread worker_;  // last: started when everything else exists
};

}  // namespace flashlm
