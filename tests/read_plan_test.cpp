// The read planner on hand-made cases, and the device profile it takes its settings from.
#include "flash/read_plan.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "common/error.h"
#include "flash/probe.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

constexpr uint64_t kKiB = 1024;

PlannerSettings settings(uint64_t max_gap, uint64_t max_request, uint64_t alignment = 4096) {
  return {max_gap, max_request, alignment};
}

// A stand-in for the file's contents: every byte knows its offset.
uint8_t file_byte(uint64_t offset) { return static_cast<uint8_t>(offset * 2654435761u >> 13); }

// Carries the plan out against the stand-in file and checks everything a caller relies on:
// reads aligned, within the size limit, filling the buffer exactly, and every item's bytes
// where item_offsets says.
void expect_plan_delivers(const ReadPlan& plan, const std::vector<int32_t>& items, uint64_t base,
                          uint64_t bundle_bytes, const PlannerSettings& s) {
  ASSERT_EQ(plan.item_offsets.size(), items.size());
  EXPECT_EQ(plan.useful_bytes, items.size() * bundle_bytes);
  std::vector<uint8_t> buffer(plan.buffer_bytes);
  uint64_t filled = 0;
  for (const PlannedRead& r : plan.reads) {
    EXPECT_EQ(r.offset % s.alignment, 0u);
    EXPECT_EQ(r.length % s.alignment, 0u);
    EXPECT_EQ(r.buffer_offset % s.alignment, 0u);
    EXPECT_GT(r.length, 0u);
    EXPECT_LE(r.length, s.max_request_bytes);
    EXPECT_EQ(r.buffer_offset, filled) << "reads fill the buffer back to back";
    for (uint64_t i = 0; i < r.length; ++i) buffer[r.buffer_offset + i] = file_byte(r.offset + i);
    filled += r.length;
  }
  EXPECT_EQ(filled, plan.buffer_bytes);
  for (size_t k = 0; k < items.size(); ++k) {
    const uint64_t start = base + static_cast<uint64_t>(items[k]) * bundle_bytes;
    for (uint64_t i = 0; i < bundle_bytes; ++i) {
      ASSERT_EQ(buffer[plan.item_offsets[k] + i], file_byte(start + i))
          << "item " << k << " (index " << items[k] << ") byte " << i;
    }
  }
}

TEST(ReadPlan, EmptyInputPlansNothing) {
  const ReadPlan plan = plan_reads({}, 0, 4096, settings(32 * kKiB, 256 * kKiB));
  EXPECT_TRUE(plan.reads.empty());
  EXPECT_TRUE(plan.item_offsets.empty());
  EXPECT_EQ(plan.buffer_bytes, 0u);
  EXPECT_TRUE(plan.requests(nullptr).empty());
}

TEST(ReadPlan, AdjacentItemsCoalesce) {
  const std::vector<int32_t> items = {3, 4, 5};
  const PlannerSettings s = settings(0, 256 * kKiB);
  const ReadPlan plan = plan_reads(items, 1 << 20, 8 * kKiB, s);
  ASSERT_EQ(plan.reads.size(), 1u);
  EXPECT_EQ(plan.reads[0].offset, (1u << 20) + 3 * 8 * kKiB);
  EXPECT_EQ(plan.reads[0].length, 3 * 8 * kKiB);
  EXPECT_EQ(plan.item_offsets, (std::vector<uint64_t>{0, 8 * kKiB, 16 * kKiB}));
  expect_plan_delivers(plan, items, 1 << 20, 8 * kKiB, s);
}

TEST(ReadPlan, FarItemsSplit) {
  const std::vector<int32_t> items = {0, 100};
  const PlannerSettings s = settings(32 * kKiB, 256 * kKiB);
  const ReadPlan plan = plan_reads(items, 0, 4096, s);
  ASSERT_EQ(plan.reads.size(), 2u);
  EXPECT_EQ(plan.reads[1].offset, 100 * 4096u);
  EXPECT_EQ(plan.buffer_bytes, 2 * 4096u) << "the hole is not read";
  EXPECT_EQ(plan.item_offsets, (std::vector<uint64_t>{0, 4096}));
  expect_plan_delivers(plan, items, 0, 4096, s);
}

TEST(ReadPlan, GapThresholdRespected) {
  const PlannerSettings s = settings(32 * kKiB, 256 * kKiB);
  // Items 0 and 9 of 4 KiB bundles leave a hole of exactly 32 KiB: read through it.
  const ReadPlan at_limit = plan_reads(std::vector<int32_t>{0, 9}, 0, 4096, s);
  ASSERT_EQ(at_limit.reads.size(), 1u);
  EXPECT_EQ(at_limit.reads[0].length, 40 * kKiB);
  EXPECT_EQ(at_limit.item_offsets[1], 36 * kKiB);
  expect_plan_delivers(at_limit, {0, 9}, 0, 4096, s);
  // One block more and the hole costs more than another request.
  const ReadPlan over = plan_reads(std::vector<int32_t>{0, 10}, 0, 4096, s);
  EXPECT_EQ(over.reads.size(), 2u);
  EXPECT_EQ(over.buffer_bytes, 8 * kKiB);
  expect_plan_delivers(over, {0, 10}, 0, 4096, s);
}

TEST(ReadPlan, GapReadOnlyWhenItSavesARequest) {
  // 64 KiB bundles with 64 KiB requests: merging items 0 and 2 would need three requests
  // instead of two, so the hole is not worth reading however generous the threshold.
  const PlannerSettings s = settings(1 << 20, 64 * kKiB);
  const ReadPlan plan = plan_reads(std::vector<int32_t>{0, 2}, 0, 64 * kKiB, s);
  EXPECT_EQ(plan.reads.size(), 2u);
  EXPECT_EQ(plan.buffer_bytes, 128 * kKiB);
  expect_plan_delivers(plan, {0, 2}, 0, 64 * kKiB, s);
}

TEST(ReadPlan, MaxRequestSizeRespected) {
  std::vector<int32_t> items(100);
  for (int i = 0; i < 100; ++i) items[i] = i;
  const PlannerSettings s = settings(32 * kKiB, 64 * kKiB);
  const ReadPlan plan = plan_reads(items, 0, 4096, s);
  // 400 KiB in seven near-equal requests rather than six full ones and a runt.
  ASSERT_EQ(plan.reads.size(), 7u);
  for (const PlannedRead& r : plan.reads) EXPECT_GE(r.length, 40 * kKiB);
  for (size_t k = 0; k < items.size(); ++k) EXPECT_EQ(plan.item_offsets[k], k * 4096);
  expect_plan_delivers(plan, items, 0, 4096, s);
}

TEST(ReadPlan, UnalignedBundlesGetAlignedReads) {
  // 3000-byte bundles straddle block boundaries; neighbours share blocks.
  const std::vector<int32_t> items = {0, 1, 5, 40, 41, 300};
  const PlannerSettings s = settings(8 * kKiB, 32 * kKiB);
  const ReadPlan plan = plan_reads(items, 8192, 3000, s);
  expect_plan_delivers(plan, items, 8192, 3000, s);
  EXPECT_EQ(plan.reads.size(), 3u);  // {0,1,5}, {40,41}, {300}
}

TEST(ReadPlan, SplitCanCutThroughAnItem) {
  // A 6000-byte bundle crossing a request boundary still lands whole: the pieces of a run
  // are stored back to back.
  std::vector<int32_t> items(20);
  for (int i = 0; i < 20; ++i) items[i] = i;
  const PlannerSettings s = settings(0, 16 * kKiB);
  const ReadPlan plan = plan_reads(items, 0, 6000, s);
  EXPECT_GT(plan.reads.size(), 1u);
  expect_plan_delivers(plan, items, 0, 6000, s);
}

TEST(ReadPlan, RandomCasesDeliverEveryItem) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    const uint64_t alignment = rng() % 2 ? 4096 : 512;
    const PlannerSettings s =
        settings(rng() % 8 * alignment, (1 + rng() % 16) * alignment, alignment);
    const uint64_t bundle_bytes = 1 + rng() % 10000;
    const uint64_t base = rng() % 4 * alignment;
    std::vector<int32_t> items;
    for (int32_t i = 0; i < 300; ++i) {
      if (rng() % 5 == 0) items.push_back(i);
    }
    const ReadPlan plan = plan_reads(items, base, bundle_bytes, s);
    expect_plan_delivers(plan, items, base, bundle_bytes, s);
    if (HasFatalFailure()) return;
  }
}

// Small bundles at half density touch nearly every page; sparse activity over bundles of a
// page or more leaves most of the layer unread; every neuron needed is the whole layer.
TEST(ReadPlan, ExpectedCoverageFollowsDensityAndBundleSize) {
  PlannerSettings s;
  s.max_gap_bytes = 8 << 10;
  s.max_request_bytes = 256 << 10;
  EXPECT_DOUBLE_EQ(expected_read_coverage(4096, 1360, 1.0, s), 1.0);
  EXPECT_DOUBLE_EQ(expected_read_coverage(4096, 1360, 0.0, s), 0.0);
  EXPECT_GT(expected_read_coverage(4096, 1360, 0.5, s), 0.95);
  const double sparse = expected_read_coverage(4096, 16384, 0.05, s);
  EXPECT_GT(sparse, 0.03);
  EXPECT_LT(sparse, 0.15);
}

TEST(ReadPlan, RangeRequestsCoverTheRangeInPieces) {
  uint8_t* dest = reinterpret_cast<uint8_t*>(uintptr_t{1} << 20);
  const auto r = range_requests(8192, 10 * 4096, 4 * 4096, dest);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].offset, 8192u);
  EXPECT_EQ(r[0].length, 4u * 4096);
  EXPECT_EQ(r[2].offset, 8192u + 8 * 4096);
  EXPECT_EQ(r[2].length, 2u * 4096);
  EXPECT_EQ(r[2].dest, dest + 8 * 4096);
}

TEST(ReadPlan, RejectsUnsortedOrDuplicateItems) {
  const PlannerSettings s = settings(0, 64 * kKiB);
  EXPECT_THROW(plan_reads(std::vector<int32_t>{3, 2}, 0, 4096, s), Error);
  EXPECT_THROW(plan_reads(std::vector<int32_t>{2, 2}, 0, 4096, s), Error);
  EXPECT_THROW(plan_reads(std::vector<int32_t>{-1}, 0, 4096, s), Error);
}

TEST(ReadPlan, RejectsBadSettings) {
  EXPECT_THROW(plan_reads(std::vector<int32_t>{1}, 0, 4096, settings(0, 6000)), Error);
  EXPECT_THROW(plan_reads(std::vector<int32_t>{1}, 0, 4096, settings(0, 0)), Error);
  EXPECT_THROW(plan_reads(std::vector<int32_t>{1}, 0, 0, settings(0, 4096)), Error);
}

TEST(ReadPlan, RequestsPointIntoTheBuffer) {
  const ReadPlan plan = plan_reads(std::vector<int32_t>{0, 50}, 0, 4096, settings(0, 64 * kKiB));
  uint8_t* buffer = reinterpret_cast<uint8_t*>(uintptr_t{1} << 20);
  const std::vector<ReadRequest> requests = plan.requests(buffer);
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[1].offset, 50 * 4096u);
  EXPECT_EQ(requests[1].length, 4096u);
  EXPECT_EQ(requests[1].dest, buffer + 4096);
}

// Derived from fio's numbers on the project's machines: per-request cost ~13 us and ~2.6 GB/s
// at depth 32 make holes of up to ~32 KiB worth reading; only 1 MiB requests come within 90%
// of the best throughput.
TEST(ReadPlanDeviceProfile, DefaultComesFromFioNumbers) {
  const DeviceProfile& p = default_device_profile();
  EXPECT_EQ(p.measured.size(), 8u);
  EXPECT_EQ(p.queue_depth, 32u);
  EXPECT_EQ(p.planner.max_request_bytes, 1u << 20);
  EXPECT_GE(p.planner.max_gap_bytes, 24 * kKiB);
  EXPECT_LE(p.planner.max_gap_bytes, 40 * kKiB);
}

TEST(ReadPlanDeviceProfile, DerivesSettingsFromTheGrid) {
  // Per request: 100 us + bytes at 1 GB/s at depth 4; depth 1 is much slower.
  std::vector<ThroughputPoint> grid;
  for (uint32_t size : {4096u, 16384u, 65536u, 262144u}) {
    const double seconds = 100e-6 + size / 1e9;
    grid.push_back({size, 4, size / seconds / 1048576.0, 1 / seconds});
    grid.push_back({size, 1, size / seconds / 4 / 1048576.0, 1 / seconds / 4});
  }
  const DeviceProfile p = derive_device_profile(grid, "test");
  EXPECT_EQ(p.queue_depth, 4u);
  EXPECT_EQ(p.planner.max_request_bytes, 262144u);
  // 100 us at 1 GB/s is 100 kB: the largest multiple of 4 KiB below it.
  EXPECT_EQ(p.planner.max_gap_bytes, 98304u);
}

TEST(ReadPlanDeviceProfile, SavesAndLoads) {
  const std::string path = testing::temp_path("profile.json");
  save_device_profile(default_device_profile(), path);
  const DeviceProfile p = load_device_profile(path);
  std::filesystem::remove(path);
  EXPECT_EQ(p.source, default_device_profile().source);
  EXPECT_EQ(p.queue_depth, default_device_profile().queue_depth);
  EXPECT_EQ(p.planner.max_request_bytes, default_device_profile().planner.max_request_bytes);
  EXPECT_EQ(p.planner.max_gap_bytes, default_device_profile().planner.max_gap_bytes);
  ASSERT_EQ(p.measured.size(), default_device_profile().measured.size());
  EXPECT_DOUBLE_EQ(p.measured[3].mib_per_s, default_device_profile().measured[3].mib_per_s);
}

TEST(ReadPlanDeviceProfile, LoadRejectsOtherFiles) {
  const std::string path = testing::temp_path("not_a_profile.json");
  std::ofstream(path) << R"({"format": "something else", "version": 1})";
  try {
    load_device_profile(path);
    FAIL() << "loaded a file that is not a profile";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("flashlm probe"), std::string::npos) << e.what();
  }
  std::ofstream(path) << "{ truncated";
  EXPECT_THROW(load_device_profile(path), Error);
  std::filesystem::remove(path);
  EXPECT_THROW(load_device_profile(path), Error);
}

}  // namespace
}  // namespace flashlm
