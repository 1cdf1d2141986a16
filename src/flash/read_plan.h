// The read planner: which O_DIRECT reads fetch a set of bundles, and where each bundle lands.
//
// Bundles of one layer lie back to back in the file, so the bundles of neighbouring neurons
// can come in one request. Flash charges a fixed cost per request on top of the bytes
// (`flashlm probe` measures both), so reading through a small hole between two wanted bundles
// beats issuing another request: the planner merges neighbours whose gap is at most
// max_gap_bytes and cuts what results into requests of at most max_request_bytes.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "flash/io_engine.h"

namespace flashlm {

struct PlannerSettings {
  uint64_t max_gap_bytes = 32 << 10;       // largest hole worth reading through
  uint64_t max_request_bytes = 256 << 10;  // longer runs are split; a multiple of alignment
  uint64_t alignment = kPageBytes;         // reads start and end on multiples of this
};

// One read: `length` bytes of the file from `offset`, to `buffer_offset` in the staging buffer.
struct PlannedRead {
  uint64_t offset = 0;
  uint32_t length = 0;
  uint64_t buffer_offset = 0;
};

struct ReadPlan {
  std::vector<PlannedRead> reads;
  // items[k]'s bundle lands at buffer + item_offsets[k], whole and contiguous.
  std::vector<uint64_t> item_offsets;
  uint64_t buffer_bytes = 0;  // staging buffer size: the bytes all reads bring in
  uint64_t useful_bytes = 0;  // the items' own bytes; buffer_bytes / useful_bytes = amplification

  // The reads as IoEngine requests into `buffer`, an aligned buffer of at least buffer_bytes.
  std::vector<ReadRequest> requests(uint8_t* buffer) const;
};

// Plans reads for `items` (strictly increasing indices), item i being the `bundle_bytes` at
// `base_offset + i * bundle_bytes`. Reads may extend up to settings.alignment - 1 bytes past
// the last bundle, which the file must hold (.flm layers are padded to a page).
ReadPlan plan_reads(std::span<const int32_t> items, uint64_t base_offset, uint64_t bundle_bytes,
                    const PlannerSettings& settings);

// The share of a layer of `d_ff` bundles that plan_reads brings in when each neuron is needed
// with probability `density`, independently (averaged over a few random draws): how much of
// the layer page alignment and hole merging turn a given activity into.
double expected_read_coverage(int d_ff, uint64_t bundle_bytes, double density,
                              const PlannerSettings& settings);

// Requests of this size keep several reads in flight for one layer and sit at the flat top of
// the device's throughput curve (see `flashlm probe`).
constexpr uint64_t kStreamRequestBytes = 1 << 20;

// One contiguous aligned range, [offset, offset + bytes) into `dest`, as requests of at most
// `max_request_bytes` each.
std::vector<ReadRequest> range_requests(uint64_t offset, uint64_t bytes, uint64_t max_request_bytes,
                                        uint8_t* dest);

}  // namespace flashlm
