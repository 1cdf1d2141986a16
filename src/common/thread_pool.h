// A fixed pool of worker threads for data-parallel loops.
//
// Decode runs a few hundred short parallel loops per token (one per matrix), so the hand-off
// must cost microseconds: workers spin briefly on an atomic generation counter before
// sleeping, instead of a mutex/condition-variable round trip per loop.
//
// Work is handed out in chunks that threads claim from a shared counter, several chunks per
// thread, and the calling thread claims too. On a busy machine (more runnable threads than
// cores) a worker that is not scheduled then costs nothing: the others take its chunks,
// instead of the whole loop waiting a scheduler time slice for it.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
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

  // Calls fn(begin, end, thread_index) on disjoint chunks covering [0, n), chunk boundaries
  // multiples of `grain`; a thread may get several chunks, never two at once, and
  // thread_index < size() names the thread (for per-thread scratch). Returns when all chunks
  // are done. If fn throws, on any thread, chunks not yet started are skipped and the first
  // exception is rethrown here once the running ones have finished.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                    int64_t grain = 1);

  static int default_threads();

 private:
  void worker_loop(int index);
  // Claims and runs chunks of the job published as `word`'s generation until none is left.
  void run_chunks(uint64_t word, int thread_index);

  std::vector<std::thread> workers_;
  // The current job; written only while no chunk of it can be claimed.
  const std::function<void(int64_t, int64_t, int)>* task_ = nullptr;
  int64_t n_ = 0;
  int64_t blocks_ = 0;
  int64_t grain_ = 1;
  // (job generation << 32) | (chunk count << 16) | next chunk: one word, so that a claim can
  // never take a chunk of a job other than the one it read.
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<uint64_t> wake_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};  // a chunk of the current job threw
  std::exception_ptr error_;         // the first exception, set by whoever set failed_
};

}  // namespace flashlm
