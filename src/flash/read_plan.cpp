#include "flash/read_plan.h"

#include <algorithm>
#include <limits>
#include <random>

#include "common/error.h"

namespace flashlm {
namespace {

uint64_t requests_for(uint64_t bytes, uint64_t max_request_bytes) {
  return (bytes + max_request_bytes - 1) / max_request_bytes;
}

void check_settings(const PlannerSettings& s, uint64_t bundle_bytes) {
  if (s.alignment == 0 || s.max_request_bytes < s.alignment ||
      s.max_request_bytes % s.alignment != 0 ||
      s.max_request_bytes > std::numeric_limits<uint32_t>::max()) {
    fail(
        "read planner: max request size {} must be a multiple of the alignment {} and below "
        "4 GiB; fix the device profile or run `flashlm probe` again",
        s.max_request_bytes, s.alignment);
  }
  if (bundle_bytes == 0) fail("read planner: bundles of 0 bytes; the model layout is corrupt");
}

// Whether the run [run_begin, run_end) should grow through the hole up to the bundle at
// [begin, end): only when that saves a request and the hole is small enough that reading it
// costs less than the request it saves.
bool worth_reading_gap(uint64_t run_begin, uint64_t run_end, uint64_t begin, uint64_t end,
                       const PlannerSettings& s) {
  const uint64_t max = s.max_request_bytes;
  const bool saves_request =
      requests_for(end - run_begin, max) <
      requests_for(run_end - run_begin, max) + requests_for(end - begin, max);
  return saves_request && begin - run_end <= s.max_gap_bytes;
}

}  // namespace

std::vector<ReadRequest> ReadPlan::requests(uint8_t* buffer) const {
  std::vector<ReadRequest> out;
  out.reserve(reads.size());
  for (const PlannedRead& r : reads) out.push_back({r.offset, r.length, buffer + r.buffer_offset});
  return out;
}

ReadPlan plan_reads(std::span<const int32_t> items, uint64_t base_offset, uint64_t bundle_bytes,
                    const PlannerSettings& settings) {
  check_settings(settings, bundle_bytes);
  ReadPlan plan;
  plan.item_offsets.reserve(items.size());
  plan.useful_bytes = items.size() * bundle_bytes;

  // A run is a stretch of the file read whole and stored in the buffer in file order, so an
  // item keeps its bytes contiguous however the run is later cut into requests.
  uint64_t run_begin = 0;
  uint64_t run_end = 0;
  const auto close_run = [&] {
    const uint64_t bytes = run_end - run_begin;
    // Equal pieces rather than full ones plus a runt, so parallel reads finish together.
    const uint64_t n = requests_for(bytes, settings.max_request_bytes);
    const uint64_t piece = align_up((bytes + n - 1) / n, settings.alignment);
    for (uint64_t at = 0; at < bytes; at += piece) {
      plan.reads.push_back({run_begin + at, static_cast<uint32_t>(std::min(piece, bytes - at)),
                            plan.buffer_bytes + at});
    }
    plan.buffer_bytes += bytes;
  };

  for (size_t k = 0; k < items.size(); ++k) {
    if (items[k] < 0 || (k > 0 && items[k] <= items[k - 1])) {
      fail(
          "read planner: item {} is {}{}; items must be non-negative and strictly increasing "
          "(sort and deduplicate them)",
          k, items[k], k > 0 ? fmt::format(", after {}", items[k - 1]) : "");
    }
    const uint64_t start = base_offset + static_cast<uint64_t>(items[k]) * bundle_bytes;
    const uint64_t begin = align_down(start, settings.alignment);
    const uint64_t end = align_up(start + bundle_bytes, settings.alignment);
    if (k == 0) {
      run_begin = begin;
    } else if (begin > run_end && !worth_reading_gap(run_begin, run_end, begin, end, settings)) {
      close_run();
      run_begin = begin;
    }
    run_end = end;
    plan.item_offsets.push_back(plan.buffer_bytes + (start - run_begin));
  }
  if (!items.empty()) close_run();
  return plan;
}

double expected_read_coverage(int d_ff, uint64_t bundle_bytes, double density,
                              const PlannerSettings& settings) {
  if (d_ff <= 0) return 0;
  constexpr int kDraws = 4;
  std::mt19937 rng(12345);
  std::bernoulli_distribution needed(std::clamp(density, 0.0, 1.0));
  std::vector<int32_t> items;
  double covered = 0;
  for (int draw = 0; draw < kDraws; ++draw) {
    items.clear();
    for (int32_t i = 0; i < d_ff; ++i) {
      if (needed(rng)) items.push_back(i);
    }
    covered += static_cast<double>(plan_reads(items, 0, bundle_bytes, settings).buffer_bytes);
  }
  const double layer = static_cast<double>(align_up(d_ff * bundle_bytes, settings.alignment));
  return std::min(1.0, covered / kDraws / layer);
}

std::vector<ReadRequest> range_requests(uint64_t offset, uint64_t bytes, uint64_t max_request_bytes,
                                        uint8_t* dest) {
  std::vector<ReadRequest> requests;
  for (uint64_t at = 0; at < bytes; at += max_request_bytes) {
    const uint64_t n = std::min(max_request_bytes, bytes - at);
    requests.push_back({offset + at, static_cast<uint32_t>(n), dest + at});
  }
  return requests;
}

}  // namespace flashlm
