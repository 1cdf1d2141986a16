// A fixed pool of worker threads for data-parallel loops.
//
// Decode runs a few hundred short parallel loops per token (one per matrix), so the hand-off
// must cost microseconds: workers spin briefly on an atomic generation counter before
// sleeping, instead of a mutex/condition-variable round trip per loop.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace flashlm {

class ThreadPool {
 public:
  // n_threads counts the calling thread: ThreadPool(1) runs everything inline.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end, thread_index) on disjoint chunks covering [0, n), at most one chunk
  // per thread, chunk boundaries multiples of `grain`; returns when all chunks are done.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                    int64_t grain = 1);

  static int default_threads();

 private:
  void worker_loop(int index);
  void run_chunk(int index);

  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t, int)>* task_ = nullptr;
  int64_t n_ = 0;
  int64_t grain_ = 1;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace flashlm
