#include "common/thread_pool.h"

#include "common/error.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <vector>

namespace flashlm {
namespace {

// More threads than this machine has cores, so workers get preempted mid-loop and others take
// their chunks: every index must still be visited exactly once, loop after loop.
TEST(ThreadPool, EveryIndexRunsExactlyOnceUnderOversubscription) {
  ThreadPool pool(8);
  for (int64_t n : {1, 2, 7, 16, 33, 1000, 4099}) {
    for (int64_t grain : {1, 3, 16}) {
      for (int repeat = 0; repeat < 50; ++repeat) {
        std::vector<std::atomic<int>> visits(static_cast<size_t>(n));
        pool.parallel_for(
            n,
            [&](int64_t begin, int64_t end, int thread) {
              ASSERT_GE(thread, 0);
              ASSERT_LT(thread, pool.size());
              ASSERT_TRUE(begin % grain == 0 || begin == 0);
              for (int64_t i = begin; i < end; ++i) visits[i].fetch_add(1);
            },
            grain);
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(visits[i].load(), 1) << "n " << n << " i " << i;
      }
    }
  }
}

// Per-thread scratch indexed by the thread index is safe: no two chunks run at once on the
// same index.
TEST(ThreadPool, AThreadIndexIsNeverUsedTwiceAtOnce) {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> busy(static_cast<size_t>(pool.size()));
  std::atomic<int> overlaps{0};
  for (int repeat = 0; repeat < 200; ++repeat) {
    pool.parallel_for(256, [&](int64_t begin, int64_t end, int thread) {
      if (busy[thread].fetch_add(1) != 0) overlaps.fetch_add(1);
      volatile double sink = 0;
      for (int64_t i = begin; i < end; ++i) sink = sink + static_cast<double>(i);
      busy[thread].fetch_sub(1);
    });
  }
  EXPECT_EQ(overlaps.load(), 0);
}

TEST(ThreadPool, SumsMatchASerialLoop) {
  ThreadPool pool(3);
  std::vector<int64_t> partial(static_cast<size_t>(pool.size()));
  pool.parallel_for(100000, [&](int64_t begin, int64_t end, int thread) {
    for (int64_t i = begin; i < end; ++i) partial[thread] += i;
  });
  int64_t total = 0;
  for (int64_t p : partial) total += p;
  EXPECT_EQ(total, int64_t{100000} * 99999 / 2);
}


// A chunk that throws, on a worker or on the caller: the caller gets the first exception,
// the chunks not yet started are skipped, and the pool runs the next loop normally.
TEST(ThreadPool, AnExceptionInAChunkReachesTheCallerAndThePoolGoesOn) {
  ThreadPool pool(2);
  for (int64_t bad : {int64_t{0}, int64_t{999}}) {  // the caller's first chunk, a late one
    std::atomic<int64_t> ran{0};
    try {
      pool.parallel_for(
          1000,
          [&](int64_t begin, int64_t end, int) {
            if (begin <= bad && bad < end) fail("index {} is bad", bad);
            ran += end - begin;
          },
          10);
      FAIL() << "the loop must rethrow";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), fmt::format("index {} is bad", bad));
    }
    EXPECT_LT(ran.load(), 1000);
    std::atomic<int64_t> sum{0};
    pool.parallel_for(100, [&](int64_t begin, int64_t end, int) {
      for (int64_t i = begin; i < end; ++i) sum += i;
    });
    EXPECT_EQ(sum.load(), 4950);
  }
}

}  // namespace
}  // namespace flashlm
