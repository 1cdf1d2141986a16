// The device probe and the device profile it writes.
//
// `flashlm probe` measures O_DIRECT random-read throughput over a grid of request sizes and
// queue depths with the IoEngine itself, then derives how the read planner should trade bytes
// against requests on this device. Without a profile, the built-in one holds fio's
// measurements on the project's machines.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "flash/io_engine.h"
#include "flash/read_plan.h"

namespace flashlm {

struct ThroughputPoint {
  uint32_t request_bytes = 0;
  unsigned queue_depth = 0;
  double mib_per_s = 0;
  double iops = 0;
};

struct DeviceProfile {
  std::string source;  // what measured it: the probed file, backend and date, or "built-in"
  std::vector<ThroughputPoint> measured;
  // Derived from `measured`: max_request_bytes is the preferred request size (the smallest
  // within 90% of the best throughput) and max_gap_bytes the largest hole worth reading
  // through at `queue_depth`.
  PlannerSettings planner;
  unsigned queue_depth = 32;  // the smallest depth within 90% of the best at that size
};

// Fits the derived settings to `measured` (which must not be empty).
DeviceProfile derive_device_profile(std::vector<ThroughputPoint> measured, std::string source);
// fio on the project's machines (O_DIRECT, io_uring, 4 GiB file), for when no profile is given.
const DeviceProfile& default_device_profile();
DeviceProfile load_device_profile(const std::string& path);
void save_device_profile(const DeviceProfile& profile, const std::string& path);

struct ProbeOptions {
  std::string path;                  // the test file
  uint64_t file_bytes = 1ull << 30;  // reads fall in the first file_bytes of it
  double seconds_per_point = 1;
  std::vector<uint64_t> request_sizes = {4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20};
  std::vector<unsigned> queue_depths = {1, 4, 16, 32};
  IoBackend backend = IoBackend::Auto;
};

// Makes sure `path` holds at least `bytes` (a multiple of 4 KiB): an existing file that large
// is reused as it is (probing only reads), a missing one is created full of random data written
// with O_DIRECT and synced, so reads really come from the device. Returns whether it created
// the file; never overwrites one.
bool prepare_probe_file(const std::string& path, uint64_t bytes);

// Keeps engine.queue_depth() random reads of `request_bytes` in flight over the first
// `region_bytes` of the engine's file for about `seconds`, and reports the throughput.
ThroughputPoint measure_random_reads(IoEngine& engine, uint64_t region_bytes,
                                     uint32_t request_bytes, double seconds);

struct ProbeResult {
  DeviceProfile profile;
  IoBackend backend = IoBackend::Auto;  // the backend that measured
  std::string fallback_reason;          // why Auto settled on pread; empty otherwise
};

// Measures every point of the grid (the test file must exist: prepare_probe_file), calling
// `on_point` after each, and derives the profile.
ProbeResult probe_device(const ProbeOptions& options,
                         const std::function<void(const ThroughputPoint&)>& on_point);

}  // namespace flashlm
