#include "flash/probe.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <tuple>

#include "common/error.h"

namespace flashlm {
namespace {

constexpr const char* kProfileFormat = "flashlm-device-profile";
constexpr int kProfileVersion = 1;
constexpr double kMiB = 1024.0 * 1024.0;
// Within this share of the best, going bigger or deeper buys too little to be worth it.
constexpr double kNearBest = 0.9;

ThroughputPoint point_from_mib(uint32_t request_bytes, unsigned queue_depth, double mib_per_s) {
  return {request_bytes, queue_depth, mib_per_s, mib_per_s * kMiB / request_bytes};
}

// The time one more request costs at a queue depth, modelled as overhead + bytes / bandwidth
// and fitted by least squares over the measured sizes: reading a hole of g bytes through beats
// issuing another request while g / bandwidth < overhead, that is g < overhead * bandwidth.
uint64_t worthwhile_gap(const std::vector<ThroughputPoint>& at_depth, uint64_t max_request_bytes) {
  const double n = static_cast<double>(at_depth.size());
  double mean_x = 0, mean_y = 0;
  for (const ThroughputPoint& p : at_depth) {
    mean_x += p.request_bytes / n;
    mean_y += 1.0 / p.iops / n;
  }
  double sxx = 0, sxy = 0;
  for (const ThroughputPoint& p : at_depth) {
    sxx += (p.request_bytes - mean_x) * (p.request_bytes - mean_x);
    sxy += (p.request_bytes - mean_x) * (1.0 / p.iops - mean_y);
  }
  if (sxx == 0) return 0;  // one size only: nothing to tell bytes from requests
  const double seconds_per_byte = sxy / sxx;
  const double seconds_per_request = mean_y - seconds_per_byte * mean_x;
  if (seconds_per_request <= 0) return 0;
  if (seconds_per_byte <= 0) return max_request_bytes;
  const double gap = seconds_per_request / seconds_per_byte;
  return std::min(align_down(static_cast<uint64_t>(gap), kPageBytes), max_request_bytes);
}

void check_profile(const DeviceProfile& p, const std::string& where) {
  if (p.measured.empty()) fail("{}: the device profile has no measurements", where);
  for (const ThroughputPoint& m : p.measured) {
    if (m.request_bytes == 0 || m.request_bytes % kPageBytes != 0 || m.queue_depth == 0 ||
        !(m.mib_per_s > 0) || !(m.iops > 0)) {
      fail(
          "{}: measurement of {} bytes at queue depth {} ({} MiB/s, {} IOPS) is invalid: sizes "
          "are multiples of 4 KiB, depths and rates positive",
          where, m.request_bytes, m.queue_depth, m.mib_per_s, m.iops);
    }
  }
  if (p.planner.max_request_bytes == 0 || p.planner.max_request_bytes % kPageBytes != 0 ||
      p.planner.max_request_bytes > (1u << 30)) {
    fail("{}: max_request_bytes {} must be a multiple of 4 KiB, at most 1 GiB", where,
         p.planner.max_request_bytes);
  }
  if (p.queue_depth == 0 || p.queue_depth > 4096) {
    fail("{}: queue_depth {} must be 1 to 4096", where, p.queue_depth);
  }
}

std::string today() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[16];
  std::strftime(text, sizeof text, "%Y-%m-%d", &tm);
  return text;
}

// Random bytes defeat devices and file systems that store zeros or repeats cheaply.
void fill_random(uint8_t* data, size_t bytes, uint64_t& state) {
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    state += 0x9e3779b97f4a7c15ull;  // splitmix64
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(data + i, &z, 8);
  }
}

void write_random_file(int fd, const std::string& path, uint64_t bytes) {
  AlignedBuffer chunk(4 << 20);
  uint64_t state = 1;
  for (uint64_t at = 0; at < bytes;) {
    const size_t n = std::min<uint64_t>(chunk.size(), bytes - at);
    fill_random(chunk.data(), n, state);
    for (size_t written = 0; written < n;) {
      const ssize_t w =
          ::pwrite(fd, chunk.data() + written, n - written, static_cast<off_t>(at + written));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        fail("writing '{}' failed at offset {}: {}; is the disk full?", path, at + written,
             w < 0 ? std::strerror(errno) : "no progress");
      }
      written += static_cast<size_t>(w);
    }
    at += n;
  }
  if (::fsync(fd) != 0) fail("syncing '{}' failed: {}", path, std::strerror(errno));
}

using Clock = std::chrono::steady_clock;

}  // namespace

DeviceProfile derive_device_profile(std::vector<ThroughputPoint> measured, std::string source) {
  DeviceProfile p;
  p.source = std::move(source);
  p.measured = std::move(measured);
  std::sort(p.measured.begin(), p.measured.end(), [](const auto& a, const auto& b) {
    return std::tie(a.request_bytes, a.queue_depth) < std::tie(b.request_bytes, b.queue_depth);
  });
  if (p.measured.empty()) fail("{}: the device profile has no measurements", p.source);
  double best = 0;
  for (const ThroughputPoint& m : p.measured) best = std::max(best, m.mib_per_s);
  // The smallest request size that comes near the device's best at some depth: bigger ones
  // gain little and cut the parallelism of a layer's reads.
  const auto near_best = std::find_if(p.measured.begin(), p.measured.end(), [&](const auto& m) {
    return m.mib_per_s >= kNearBest * best;
  });
  p.planner.max_request_bytes = near_best->request_bytes;
  // The shallowest queue that gets near the best at that size.
  double best_at_size = 0;
  for (const ThroughputPoint& m : p.measured) {
    if (m.request_bytes == near_best->request_bytes)
      best_at_size = std::max(best_at_size, m.mib_per_s);
  }
  for (const ThroughputPoint& m : p.measured) {
    if (m.request_bytes == near_best->request_bytes && m.mib_per_s >= kNearBest * best_at_size) {
      p.queue_depth = m.queue_depth;
      break;
    }
  }
  std::vector<ThroughputPoint> at_depth;
  for (const ThroughputPoint& m : p.measured) {
    if (m.queue_depth == p.queue_depth) at_depth.push_back(m);
  }
  p.planner.max_gap_bytes = worthwhile_gap(at_depth, p.planner.max_request_bytes);
  check_profile(p, p.source);
  return p;
}

const DeviceProfile& default_device_profile() {
  static const DeviceProfile profile = derive_device_profile(
      {point_from_mib(4 << 10, 1, 60), point_from_mib(4 << 10, 32, 285),
       point_from_mib(16 << 10, 1, 200), point_from_mib(16 << 10, 32, 900),
       point_from_mib(64 << 10, 1, 680), point_from_mib(64 << 10, 32, 1550),
       point_from_mib(1 << 20, 1, 1140), point_from_mib(1 << 20, 32, 2470)},
      "built-in: fio on the project's machines (O_DIRECT, io_uring, 4 GiB file)");
  return profile;
}

DeviceProfile load_device_profile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    fail("cannot open device profile '{}': {}; write one with `flashlm probe`", path,
         std::strerror(errno));
  }
  DeviceProfile p;
  try {
    const nlohmann::json j = nlohmann::json::parse(in);
    if (j.at("format") != kProfileFormat || j.at("version") != kProfileVersion) {
      fail("'{}' is not a version {} flashlm device profile; write one with `flashlm probe`", path,
           kProfileVersion);
    }
    p.source = j.at("source").get<std::string>();
    for (const nlohmann::json& m : j.at("measured")) {
      p.measured.push_back({m.at("request_bytes").get<uint32_t>(),
                            m.at("queue_depth").get<unsigned>(), m.at("mib_per_s").get<double>(),
                            m.at("iops").get<double>()});
    }
    p.queue_depth = j.at("queue_depth").get<unsigned>();
    p.planner.max_request_bytes = j.at("max_request_bytes").get<uint64_t>();
    p.planner.max_gap_bytes = j.at("max_gap_bytes").get<uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail("'{}' is not a valid device profile ({}); write a new one with `flashlm probe`", path,
         e.what());
  }
  check_profile(p, path);
  return p;
}

void save_device_profile(const DeviceProfile& profile, const std::string& path) {
  // Ordered, so the file reads top-down: what it is, the settings, then the evidence.
  nlohmann::ordered_json measured = nlohmann::ordered_json::array();
  for (const ThroughputPoint& m : profile.measured) {
    measured.push_back({{"request_bytes", m.request_bytes},
                        {"queue_depth", m.queue_depth},
                        {"mib_per_s", m.mib_per_s},
                        {"iops", m.iops}});
  }
  const nlohmann::ordered_json j = {{"format", kProfileFormat},
                                    {"version", kProfileVersion},
                                    {"source", profile.source},
                                    {"queue_depth", profile.queue_depth},
                                    {"max_request_bytes", profile.planner.max_request_bytes},
                                    {"max_gap_bytes", profile.planner.max_gap_bytes},
                                    {"measured", measured}};
  std::ofstream out(path);
  out << j.dump(2) << '\n';
  if (!out) fail("cannot write device profile '{}': {}", path, std::strerror(errno));
}

bool prepare_probe_file(const std::string& path, uint64_t bytes) {
  if (bytes == 0 || bytes % kPageBytes != 0) {
    fail("probe file size {} must be a positive multiple of 4 KiB", bytes);
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (!S_ISREG(st.st_mode)) fail("'{}' is not a regular file; give probe a file path", path);
    if (static_cast<uint64_t>(st.st_size) < bytes) {
      fail(
          "'{}' exists but holds {} bytes, fewer than the {} to probe; remove it or pass a "
          "smaller --size (probe never overwrites a file)",
          path, st.st_size, bytes);
    }
    return false;
  }
  if (errno != ENOENT) fail("cannot check '{}': {}", path, std::strerror(errno));
  // Written under another name and renamed when complete, so an interrupted run never leaves
  // a short file to be reused.
  const std::string partial = path + ".partial";
  const int fd = open_uncached(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create '{}': {}", partial, std::strerror(errno));
  try {
    write_random_file(fd, partial, bytes);
  } catch (...) {
    ::close(fd);
    ::unlink(partial.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(partial.c_str(), path.c_str()) != 0) {
    fail("cannot rename '{}' to '{}': {}", partial, path, std::strerror(errno));
  }
  return true;
}

ThroughputPoint measure_random_reads(IoEngine& engine, uint64_t region_bytes,
                                     uint32_t request_bytes, double seconds) {
  const unsigned depth = engine.queue_depth();
  const uint64_t blocks = request_bytes ? region_bytes / request_bytes : 0;
  if (blocks == 0) {
    fail("cannot probe {}-byte reads in the first {} bytes of '{}'; use a larger file (--size)",
         request_bytes, region_bytes, engine.path());
  }
  // One slot per read in flight. The data is thrown away, so two reads that happen to share a
  // slot at the same time do no harm.
  AlignedBuffer slots(size_t{depth} * request_bytes);
  engine.register_buffers({slots.span()});
  struct Unregister {
    IoEngine& engine;
    ~Unregister() { engine.unregister_buffers(); }
  } unregister{engine};

  // Like fio: offsets aligned to the request size, uniformly random over the region.
  std::mt19937_64 rng(uint64_t{request_bytes} * 131 + depth);
  std::vector<ReadRequest> batch;
  const auto read_batch = [&](uint64_t n) {
    batch.resize(n);
    for (uint64_t i = 0; i < n; ++i) {
      batch[i] = {rng() % blocks * request_bytes, request_bytes,
                  slots.data() + (i % depth) * request_bytes};
    }
    const auto start = Clock::now();
    engine.read_all(batch);
    return std::chrono::duration<double>(Clock::now() - start).count();
  };

  // The queue runs below full depth while each batch drains, so batches are few and large: an
  // unmeasured warm-up gives a first rate, the first batch covers about half the time at that
  // rate, the next most of what is left at the rate measured so far.
  const uint64_t warm_up = 2ull * depth;
  double rate = static_cast<double>(warm_up) / read_batch(warm_up);
  double fraction = 0.5;
  uint64_t reads = 0;
  double elapsed = 0;
  while (elapsed < 0.95 * seconds) {
    const auto n =
        std::max<uint64_t>(depth, static_cast<uint64_t>((seconds - elapsed) * rate * fraction));
    elapsed += read_batch(n);
    reads += n;
    rate = static_cast<double>(reads) / elapsed;
    fraction = 0.9;
  }
  const double iops = static_cast<double>(reads) / elapsed;
  return {request_bytes, depth, iops * request_bytes / kMiB, iops};
}

ProbeResult probe_device(const ProbeOptions& options,
                         const std::function<void(const ThroughputPoint&)>& on_point) {
  if (options.request_sizes.empty() || options.queue_depths.empty() ||
      !(options.seconds_per_point > 0)) {
    fail("probe needs at least one request size, one queue depth and a positive time per point");
  }
  for (uint64_t size : options.request_sizes) {
    if (size == 0 || size % kPageBytes != 0 || size > (1u << 30)) {
      fail("probe request size {} must be a multiple of 4 KiB, at most 1 GiB", size);
    }
  }
  ProbeResult result;
  std::vector<ThroughputPoint> points;
  uint64_t region = 0;
  for (unsigned depth : options.queue_depths) {
    IoEngine engine(options.path, options.backend, depth);
    result.backend = engine.backend();
    result.fallback_reason = engine.fallback_reason();
    region = std::min(engine.file_size(), options.file_bytes);
    for (uint64_t size : options.request_sizes) {
      points.push_back(measure_random_reads(engine, region, static_cast<uint32_t>(size),
                                            options.seconds_per_point));
      if (on_point) on_point(points.back());
    }
  }
  result.profile = derive_device_profile(
      std::move(points), fmt::format("flashlm probe of {} (first {} MiB, {}, {} s per point, {})",
                                     options.path, region >> 20, io_backend_name(result.backend),
                                     options.seconds_per_point, today()));
  return result;
}

}  // namespace flashlm
