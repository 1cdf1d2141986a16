#include "sparse/neuron_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

namespace flashlm {
namespace {

constexpr size_t kBundle = 24;

// The bytes neuron n's bundle holds, so a row's contents tell which neuron it is.
void fill(uint8_t* bundle, int32_t n) {
  for (size_t i = 0; i < kBundle; ++i) bundle[i] = static_cast<uint8_t>(n * 31 + i * 7);
}
bool holds(const uint8_t* bundle, int32_t n) {
  for (size_t i = 0; i < kBundle; ++i) {
    if (bundle[i] != static_cast<uint8_t>(n * 31 + i * 7)) return false;
  }
  return true;
}

std::vector<int32_t> random_active(std::mt19937& rng, int d_ff, int count) {
  std::set<int32_t> s;
  std::uniform_int_distribution<int32_t> pick(0, d_ff - 1);
  while (static_cast<int>(s.size()) < count) s.insert(pick(rng));
  return {s.begin(), s.end()};
}

TEST(NeuronCache, RandomTokensKeepIndexAndContentsConsistent) {
  const int d_ff = 300, capacity = 80, window = 4;
  NeuronCache cache(d_ff, kBundle, capacity, window);
  std::mt19937 rng(3);
  std::map<int32_t, int64_t> last_active;
  std::vector<int32_t> to_load, uncached;
  for (int64_t step = 0; step < 500; ++step) {
    const int count = std::uniform_int_distribution<int>(0, 100)(rng);  // sometimes > capacity
    const auto active = random_active(rng, d_ff, count);
    const int before_hits = static_cast<int>(cache.stats().hits);
    cache.begin_token(step, active, to_load, uncached);
    for (int32_t n : to_load) fill(cache.bundle(n), n);

    ASSERT_LE(cache.size(), capacity);
    EXPECT_EQ(static_cast<int>(cache.stats().hits) - before_hits + to_load.size() + uncached.size(),
              active.size());
    for (int32_t n : active) {
      const bool cached = cache.contains(n);
      const bool transient = std::binary_search(uncached.begin(), uncached.end(), n);
      EXPECT_NE(cached, transient) << "active neuron " << n << " at step " << step;
      last_active[n] = step;
    }
    // Every row is indexed both ways and holds exactly its neuron's bundle.
    for (int row = 0; row < cache.size(); ++row) {
      const int32_t n = cache.neuron_at(row);
      ASSERT_TRUE(cache.contains(n));
      EXPECT_TRUE(holds(cache.bundle(n), n)) << "row " << row << " neuron " << n;
      // Nothing older than the window survives.
      EXPECT_GT(last_active[n], step - window) << "neuron " << n << " at step " << step;
    }
    int cached_count = 0;
    for (int32_t n = 0; n < d_ff; ++n) cached_count += cache.contains(n);
    EXPECT_EQ(cached_count, cache.size());
  }
  EXPECT_GT(cache.stats().hits, 0u);
  EXPECT_GT(cache.stats().evictions, 0u);
}

TEST(NeuronCache, WindowKeepsRecentNeuronsAndDropsOldOnes) {
  NeuronCache cache(10, kBundle, 10, 2);
  std::vector<int32_t> load, uncached;
  const std::vector<int32_t> a = {1, 2}, b = {3}, none = {};
  cache.begin_token(0, a, load, uncached);
  EXPECT_EQ(load, a);
  cache.begin_token(1, b, load, uncached);
  EXPECT_TRUE(cache.contains(1) && cache.contains(3));  // 1 and 2 still in the 2-token window
  cache.begin_token(2, a, load, uncached);
  EXPECT_TRUE(load.empty());  // hits
  cache.begin_token(3, none, load, uncached);
  EXPECT_FALSE(cache.contains(3));  // last used at step 1, window 2
  EXPECT_TRUE(cache.contains(1));
}

TEST(NeuronCache, FullCacheEvictsLeastRecentlyUsed) {
  NeuronCache cache(10, kBundle, 3, 100);
  std::vector<int32_t> load, uncached;
  cache.begin_token(0, std::vector<int32_t>{0}, load, uncached);
  cache.begin_token(1, std::vector<int32_t>{1}, load, uncached);
  cache.begin_token(2, std::vector<int32_t>{2}, load, uncached);
  cache.begin_token(3, std::vector<int32_t>{0, 5}, load, uncached);  // evicts 1, the oldest unused
  EXPECT_TRUE(cache.contains(0) && cache.contains(2) && cache.contains(5));
  EXPECT_FALSE(cache.contains(1));
  EXPECT_TRUE(uncached.empty());
}

}  // namespace
}  // namespace flashlm
