#include "common/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FLASHLM_CPU_RELAX() _mm_pause()
#else
#define FLASHLM_CPU_RELAX() ((void)0)
#endif

namespace flashlm {
namespace {
// How long a worker spins waiting for the next loop before it sleeps: long enough to cover the
// gap between two matrix products of one token, short enough not to burn a core when idle.
constexpr auto kSpinTime = std::chrono::microseconds(300);
}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  for (int i = 1; i < std::max(1, n_threads); ++i) {
    workers_.emplace_back([this, i] { worker_loop(i); });
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
}

int ThreadPool::default_threads() {
  return std::max(1u, std::thread::hardware_concurrency());
}

void ThreadPool::run_chunk(int index) {
  const int64_t threads = size();
  const int64_t blocks = (n_ + grain_ - 1) / grain_;
  const int64_t begin = std::min(n_, blocks * index / threads * grain_);
  const int64_t end = std::min(n_, blocks * (index + 1) / threads * grain_);
  if (begin < end) (*task_)(begin, end, index);
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    const auto spin_until = std::chrono::steady_clock::now() + kSpinTime;
    uint64_t current = generation_.load(std::memory_order_acquire);
    while (current == seen && std::chrono::steady_clock::now() < spin_until) {
      FLASHLM_CPU_RELAX();
      current = generation_.load(std::memory_order_acquire);
    }
    while (current == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      current = generation_.load(std::memory_order_acquire);
    }
    seen = current;
    if (stop_.load()) return;
    run_chunk(index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                              int64_t grain) {
  if (n <= 0) return;
  if (workers_.empty() || n <= grain) {
    fn(0, n, 0);
    return;
  }
  task_ = &fn;
  n_ = n;
  grain_ = std::max<int64_t>(1, grain);
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  run_chunk(0);
  while (pending_.load(std::memory_order_acquire) != 0) FLASHLM_CPU_RELAX();
}

}  // namespace flashlm
