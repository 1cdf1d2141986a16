#include "server/turn_queue.h"

namespace flashlm {

std::optional<TurnQueue::Turn> TurnQueue::acquire() {
  std::unique_lock lock(mutex_);
  const uint64_t ahead = next_ticket_ - serving_;  // the running request and those waiting
  if (closed_ || ahead > static_cast<uint64_t>(max_waiting_)) return std::nullopt;
  const uint64_t ticket = next_ticket_++;
  turn_changed_.wait(lock, [&] { return closed_ || serving_ == ticket; });
  if (closed_) return std::nullopt;
  return Turn(*this);
}

void TurnQueue::release() {
  {
    std::lock_guard lock(mutex_);
    ++serving_;
  }
  turn_changed_.notify_all();
}

void TurnQueue::close() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  turn_changed_.notify_all();
}

int TurnQueue::waiting() const {
  std::lock_guard lock(mutex_);
  const uint64_t in_queue = next_ticket_ - serving_;
  return static_cast<int>(in_queue > 0 ? in_queue - 1 : 0);
}

bool TurnQueue::busy() const {
  std::lock_guard lock(mutex_);
  return next_ticket_ != serving_;
}

bool TurnQueue::closed() const {
  std::lock_guard lock(mutex_);
  return closed_;
}

}  // namespace flashlm
