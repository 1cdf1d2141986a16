#include "common/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <utility>

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
// Chunks per thread: enough to balance uneven progress, few enough that claiming is cheap.
constexpr int64_t kChunksPerThread = 4;
constexpr uint64_t kFieldMask = 0xffff;

uint64_t generation_of(uint64_t word) { return word >> 32; }
int64_t chunks_of(uint64_t word) { return static_cast<int64_t>((word >> 16) & kFieldMask); }
int64_t next_of(uint64_t word) { return static_cast<int64_t>(word & kFieldMask); }
}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  for (int i = 1; i < std::max(1, n_threads); ++i) {
    workers_.emplace_back([this, i] { worker_loop(i); });
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  wake_.fetch_add(1);
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

int ThreadPool::default_threads() {
  return std::max(1u, std::thread::hardware_concurrency());
}

void ThreadPool::run_chunks(uint64_t word, int thread_index) {
  const uint64_t generation = generation_of(word);
  for (;;) {
    if (generation_of(word) != generation || next_of(word) >= chunks_of(word)) return;
    if (!claim_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
      continue;  // `word` now holds the current value: re-check it
    }
    // The claim succeeded, so this job's fields are published and stay put until its last
    // chunk is done.
    const int64_t chunk = next_of(word);
    const int64_t chunks = chunks_of(word);
    const int64_t begin = std::min(n_, blocks_ * chunk / chunks * grain_);
    const int64_t end = std::min(n_, blocks_ * (chunk + 1) / chunks * grain_);
    // After a chunk threw, the rest are claimed and counted but not run: the loop stops early.
    if (begin < end && !failed_.load(std::memory_order_acquire)) {
      try {
        (*task_)(begin, end, thread_index);
      } catch (...) {
        if (!failed_.exchange(true, std::memory_order_acq_rel)) error_ = std::current_exception();
      }
    }
    done_.fetch_add(1, std::memory_order_acq_rel);
    word = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    const auto spin_until = std::chrono::steady_clock::now() + kSpinTime;
    uint64_t current = wake_.load(std::memory_order_acquire);
    while (current == seen && std::chrono::steady_clock::now() < spin_until) {
      FLASHLM_CPU_RELAX();
      current = wake_.load(std::memory_order_acquire);
    }
    while (current == seen) {
      wake_.wait(seen, std::memory_order_acquire);
      current = wake_.load(std::memory_order_acquire);
    }
    seen = current;
    if (stop_.load()) return;
    run_chunks(claim_.load(std::memory_order_acquire), index);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                              int64_t grain) {
  if (n <= 0) return;
  if (workers_.empty() || n <= grain) {
    fn(0, n, 0);
    return;
  }
  grain_ = std::max<int64_t>(1, grain);
  blocks_ = (n + grain_ - 1) / grain_;
  const int64_t chunks = std::min<int64_t>(blocks_, size() * kChunksPerThread);
  task_ = &fn;
  n_ = n;
  failed_.store(false, std::memory_order_relaxed);
  error_ = nullptr;
  done_.store(0, std::memory_order_relaxed);
  const uint64_t generation = generation_of(claim_.load(std::memory_order_relaxed)) + 1;
  const uint64_t word = (generation << 32) | (static_cast<uint64_t>(chunks) << 16);
  claim_.store(word, std::memory_order_release);
  wake_.fetch_add(1, std::memory_order_acq_rel);
  wake_.notify_all();
  run_chunks(word, 0);
  // Chunks still running on workers: wait, giving the core away if that takes long (a worker
  // that was preempted needs it to finish).
  for (int spins = 0; done_.load(std::memory_order_acquire) != chunks; ++spins) {
    if (spins < 2000) {
      FLASHLM_CPU_RELAX();
    } else {
      std::this_thread::yield();
    }
  }
  // The first exception a chunk threw, on whichever thread: the caller's now. (Written
  // before that chunk was counted done, so it is visible here.)
  if (failed_.load(std::memory_order_acquire)) std::rethrow_exception(std::exchange(error_, nullptr));
}

}  // namespace flashlm
