// The server has one model and one KV cache, so generations take turns: first come, first
// served, with at most `max_waiting` requests waiting behind the one running. A request that
// finds the queue full is turned away at once (503) rather than piling up without bound.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <utility>

namespace flashlm {

class TurnQueue {
 public:
  explicit TurnQueue(int max_waiting) : max_waiting_(max_waiting) {}

  // The right to use the engine, released when destroyed.
  class Turn {
   public:
    explicit Turn(TurnQueue& queue) : queue_(&queue) {}
    Turn(Turn&& other) noexcept : queue_(std::exchange(other.queue_, nullptr)) {}
    Turn& operator=(Turn&&) = delete;
    ~Turn() {
      if (queue_) queue_->release();
    }

   private:
    TurnQueue* queue_;
  };

  // Blocks until it is this caller's turn. Returns nothing when the queue is full or closed.
  std::optional<Turn> acquire();
  // Wakes every waiter empty-handed and refuses all later callers: the server is stopping.
  void close();

  int waiting() const;
  bool busy() const;
  bool closed() const;

 private:
  void release();

  const int max_waiting_;
  mutable std::mutex mutex_;
  std::condition_variable turn_changed_;
  uint64_t next_ticket_ = 0;  // tickets are served in order
  uint64_t serving_ = 0;      // the ticket whose turn it is
  bool closed_ = false;
};

}  // namespace flashlm
