// `flashlm probe`: measures the device's direct-I/O random-read throughput over a grid of
// request sizes and queue depths and writes the device profile the read planner follows.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <set>

#include "cli/commands.h"
#include "flash/probe.h"

namespace flashlm {
namespace {

std::string size_name(uint64_t bytes) {
  if (bytes > 0 && bytes % (1 << 20) == 0) return fmt::format("{}M", bytes >> 20);
  return fmt::format("{}K", bytes >> 10);
}

// One row per request size, one column per queue depth, each cell from `cell`.
template <typename Cell>
void print_grid(const DeviceProfile& p, const char* title, Cell cell) {
  std::set<uint32_t> sizes;
  std::set<unsigned> depths;
  for (const ThroughputPoint& m : p.measured) {
    sizes.insert(m.request_bytes);
    depths.insert(m.queue_depth);
  }
  std::printf("\n%-8s", title);
  for (unsigned d : depths) std::printf(" %9s", fmt::format("QD {}", d).c_str());
  std::printf("\n");
  for (uint32_t s : sizes) {
    std::printf("%-8s", size_name(s).c_str());
    for (unsigned d : depths) {
      const auto m = std::find_if(p.measured.begin(), p.measured.end(), [&](const auto& x) {
        return x.request_bytes == s && x.queue_depth == d;
      });
      std::printf(" %9s", m == p.measured.end() ? "-" : cell(*m).c_str());
    }
    std::printf("\n");
  }
}

}  // namespace

void register_probe_command(CLI::App& app) {
  struct Options {
    ProbeOptions probe;
    std::string io = "auto";
    std::string output;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "probe",
      "Measure the disk's direct-I/O random-read throughput and write a device profile "
      "for the read planner");
  cmd->add_option("path", o->probe.path,
                  "Test file on the disk to measure: created full of random data if missing, "
                  "reused (only read) if it exists")
      ->required();
  cmd->add_option("--size", o->probe.file_bytes, "Size of the test file; reads fall within it")
      ->transform(CLI::AsSizeValue(false))
      ->default_str("1G");
  cmd->add_option("--seconds-per-point", o->probe.seconds_per_point,
                  "How long to measure each request size and queue depth")
      ->check(CLI::Range(0.01, 600.0))
      ->capture_default_str();
  cmd->add_option("--sizes", o->probe.request_sizes, "Request sizes to measure (multiples of 4K)")
      ->delimiter(',')
      ->transform(CLI::AsSizeValue(false))
      ->default_str("4K,16K,64K,256K,1M");
  cmd->add_option("--depths", o->probe.queue_depths, "Queue depths (reads in flight) to measure")
      ->delimiter(',')
      ->check(CLI::Range(1, 4096))
      ->default_str("1,4,16,32");
  cmd->add_option("--io", o->io, "Read backend: auto, uring (io_uring) or pread (thread pool)")
      ->check(CLI::IsMember({"auto", "uring", "pread"}))
      ->capture_default_str();
  cmd->add_option("-o,--output", o->output, "Write the device profile (JSON) here");
  cmd->callback([o] {
    o->probe.backend = parse_io_backend(o->io);
    if (prepare_probe_file(o->probe.path, o->probe.file_bytes)) {
      std::printf("created %s (%.0f MiB of random data)\n", o->probe.path.c_str(),
                  o->probe.file_bytes / 1048576.0);
      std::fflush(stdout);  // before the measurements' progress on stderr
    }
    const ProbeResult r = probe_device(o->probe, [](const ThroughputPoint& m) {
      std::fprintf(stderr, "  %5s QD %-3u %8.1f MiB/s %9.0f IOPS\n",
                   size_name(m.request_bytes).c_str(), m.queue_depth, m.mib_per_s, m.iops);
    });
    if (!r.fallback_reason.empty()) std::printf("note: %s\n", r.fallback_reason.c_str());
    const DeviceProfile& p = r.profile;
    std::printf("%s\n", p.source.c_str());
    print_grid(p, "MiB/s",
               [](const ThroughputPoint& m) { return fmt::format("{:.1f}", m.mib_per_s); });
    print_grid(p, "IOPS", [](const ThroughputPoint& m) { return fmt::format("{:.0f}", m.iops); });
    std::printf(
        "\nplanner: requests of up to %s at queue depth %u; read through gaps of up to %s\n",
        size_name(p.planner.max_request_bytes).c_str(), p.queue_depth,
        size_name(p.planner.max_gap_bytes).c_str());
    if (!o->output.empty()) {
      save_device_profile(p, o->output);
      std::printf("wrote %s\n", o->output.c_str());
    }
  });
}

}  // namespace flashlm
