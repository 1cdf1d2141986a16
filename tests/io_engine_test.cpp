// The direct-I/O read engine, on both backends: reads return the file's bytes, many in flight,
// and every failure (I/O error, end of file, short read) is handled or reported, never passed
// off as data.
#include "flash/io_engine.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "common/error.h"
#include "flash/probe.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> bytes(n);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
  return bytes;
}

// What a buffered (page cache) read of the file says is there: the reference.
std::vector<uint8_t> buffered_pread(const std::string& path, uint64_t offset, size_t length) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0);
  std::vector<uint8_t> bytes(length);
  EXPECT_EQ(::pread(fd, bytes.data(), length, static_cast<off_t>(offset)),
            static_cast<ssize_t>(length));
  ::close(fd);
  return bytes;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class IoEngineTest : public ::testing::TestWithParam<IoBackend> {
 protected:
  static constexpr size_t kFileBytes = 4 << 20;

  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(name.begin(), name.end(), '/', '_');  // "Case/backend"
    path_ = testing::temp_path(name + ".bin");
    const std::vector<uint8_t> bytes = random_bytes(kFileBytes, 42);
    std::ofstream(path_, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    if (GetParam() == IoBackend::IoUring) {
      try {
        IoEngine probe(path_, IoBackend::IoUring, 1);
      } catch (const Error& e) {
        GTEST_SKIP() << e.what();
      }
    }
  }
  void TearDown() override { std::filesystem::remove(path_); }

  std::unique_ptr<IoEngine> engine(unsigned queue_depth = 16) {
    return std::make_unique<IoEngine>(path_, GetParam(), queue_depth);
  }

  // `n` reads of 1 to 16 blocks at random aligned offsets, each into its own part of `buffer`.
  std::vector<ReadRequest> random_requests(size_t n, uint64_t alignment, AlignedBuffer& buffer,
                                           uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<ReadRequest> requests(n);
    const uint64_t max_length = 16 * alignment;
    buffer = AlignedBuffer(n * max_length);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t length = static_cast<uint32_t>((1 + rng() % 16) * alignment);
      const uint64_t offset = rng() % ((kFileBytes - length) / alignment + 1) * alignment;
      requests[i] = {offset, length, buffer.data() + i * max_length};
    }
    return requests;
  }

  void expect_file_bytes(const std::vector<ReadRequest>& requests) {
    for (const ReadRequest& r : requests) {
      const std::vector<uint8_t> expected = buffered_pread(path_, r.offset, r.length);
      ASSERT_EQ(std::memcmp(r.dest, expected.data(), r.length), 0)
          << "read of " << r.length << " bytes at offset " << r.offset << " differs";
    }
  }

  std::string path_;
};

TEST_P(IoEngineTest, ReportsTheBackendInUse) {
  auto io = engine();
  EXPECT_EQ(io->backend(), GetParam());
  EXPECT_TRUE(io->fallback_reason().empty());
  EXPECT_EQ(io->file_size(), kFileBytes);
  EXPECT_GE(io->alignment(), 512u);
  EXPECT_EQ(kPageBytes % io->alignment(), 0u) << "AlignedBuffer must satisfy it";
}

TEST_P(IoEngineTest, RandomReadsMatchTheFile) {
  auto io = engine();
  AlignedBuffer buffer;
  const std::vector<ReadRequest> requests = random_requests(200, io->alignment(), buffer, 1);
  io->read_all(requests);
  expect_file_bytes(requests);
  uint64_t bytes = 0;
  for (const ReadRequest& r : requests) bytes += r.length;
  const IoCounters c = io->counters();
  EXPECT_EQ(c.requests, 200u);
  EXPECT_EQ(c.bytes_read, bytes);
  EXPECT_EQ(c.resubmits, 0u);
  EXPECT_GT(c.wait_seconds, 0);
  io->reset_counters();
  EXPECT_EQ(io->counters().requests, 0u);
}

TEST_P(IoEngineTest, ManyRequestsInFlightAcrossSubmits) {
  // Far more requests than the queue is deep, submitted in several batches before one wait,
  // with work in between as a caller overlapping compute would do.
  auto io = engine(4);
  AlignedBuffer buffer;
  const std::vector<ReadRequest> requests = random_requests(1000, io->alignment(), buffer, 2);
  const std::span<const ReadRequest> all(requests);
  io->submit(all.subspan(0, 300));
  io->submit(all.subspan(300, 500));
  volatile uint64_t busy = 0;
  for (int i = 0; i < 100000; ++i) busy = busy + i;
  io->submit(all.subspan(800));
  io->wait();
  expect_file_bytes(requests);
  EXPECT_EQ(io->counters().requests, 1000u);
  io->wait();  // nothing in flight: returns at once
}

TEST_P(IoEngineTest, RegisteredBuffersReadTheSameBytes) {
  auto io = engine();
  AlignedBuffer buffer;
  const std::vector<ReadRequest> requests = random_requests(100, io->alignment(), buffer, 3);
  const bool registered = io->register_buffers({buffer.span()});
  EXPECT_EQ(registered, GetParam() == IoBackend::IoUring);
  io->read_all(requests);
  expect_file_bytes(requests);
  io->unregister_buffers();
}

TEST_P(IoEngineTest, ShortReadsContinueWhereTheyStopped) {
  auto io = engine();
  const uint64_t a = io->alignment();
  // The first completion of each request reports 1.5 blocks: the engine must continue from
  // the whole block (re-reading the half) until the request is complete.
  std::mutex mutex;
  std::set<const uint8_t*> cut;
  std::vector<ReadRequest> remainders;
  io->set_fault_hook([&](const ReadRequest& read, int64_t result) -> int64_t {
    std::lock_guard lock(mutex);
    if (read.length == 4 * a && cut.insert(read.dest).second)
      return static_cast<int64_t>(a + a / 2);
    remainders.push_back(read);
    return result;
  });
  AlignedBuffer buffer;
  std::vector<ReadRequest> requests = random_requests(50, a, buffer, 4);
  for (ReadRequest& r : requests) r.length = static_cast<uint32_t>(4 * a);
  io->read_all(requests);
  expect_file_bytes(requests);
  EXPECT_EQ(io->counters().resubmits, 50u);
  bool saw_remainder = false;
  for (const ReadRequest& r : remainders) saw_remainder |= r.length == 3 * a;
  EXPECT_TRUE(saw_remainder) << "no read of the remaining 3 blocks";
}

TEST_P(IoEngineTest, InterruptedReadsAreRetried) {
  auto io = engine();
  std::atomic<int> interrupts{0};
  io->set_fault_hook([&](const ReadRequest&, int64_t result) -> int64_t {
    return interrupts++ < 5 ? -EINTR : result;
  });
  AlignedBuffer buffer;
  const std::vector<ReadRequest> requests = random_requests(20, io->alignment(), buffer, 5);
  io->read_all(requests);
  expect_file_bytes(requests);
  EXPECT_EQ(io->counters().resubmits, 5u);
}

TEST_P(IoEngineTest, InjectedIoErrorNamesFileAndOffset) {
  auto io = engine(4);
  AlignedBuffer buffer;
  const std::vector<ReadRequest> requests = random_requests(100, io->alignment(), buffer, 6);
  const ReadRequest bad = requests[37];
  io->set_fault_hook([&](const ReadRequest& read, int64_t result) -> int64_t {
    return read.dest == bad.dest ? -EIO : result;
  });
  const std::string message = error_of([&] { io->read_all(requests); });
  EXPECT_NE(message.find(path_), std::string::npos) << message;
  EXPECT_NE(message.find(fmt::format("offset {}", bad.offset)), std::string::npos) << message;
  EXPECT_NE(message.find(fmt::format("{} bytes", bad.length)), std::string::npos) << message;
  EXPECT_NE(message.find(std::strerror(EIO)), std::string::npos) << message;
  // The failure ends that batch only: the engine reads on afterwards.
  io->set_fault_hook(nullptr);
  io->read_all(requests);
  expect_file_bytes(requests);
}

TEST_P(IoEngineTest, ReadingPastTheEndOfATruncatedFileFails) {
  auto io = engine();
  ASSERT_EQ(::truncate(path_.c_str(), 40 << 10), 0);
  AlignedBuffer buffer(32 << 10);
  // Half of this read exists: the engine gets 8 KiB, asks for the rest and meets the end.
  const ReadRequest straddling{32 << 10, 32 << 10, buffer.data()};
  std::string message = error_of([&] { io->read_all({&straddling, 1}); });
  EXPECT_NE(message.find(path_), std::string::npos) << message;
  EXPECT_NE(message.find("end of file"), std::string::npos) << message;
  EXPECT_NE(message.find("offset 32768"), std::string::npos) << message;
  EXPECT_NE(message.find("40960"), std::string::npos) << "names the file's size: " << message;
  const ReadRequest beyond{1 << 20, 4096, buffer.data()};
  message = error_of([&] { io->read_all({&beyond, 1}); });
  EXPECT_NE(message.find("end of file"), std::string::npos) << message;
}

TEST_P(IoEngineTest, RejectsUnalignedRequests) {
  auto io = engine();
  AlignedBuffer buffer(8192);
  const ReadRequest bad_offset{100, 4096, buffer.data()};
  EXPECT_NE(error_of([&] { io->read_all({&bad_offset, 1}); }).find("aligned"), std::string::npos);
  const ReadRequest bad_dest{0, 4096, buffer.data() + 1};
  EXPECT_NE(error_of([&] { io->read_all({&bad_dest, 1}); }).find("aligned"), std::string::npos);
  EXPECT_EQ(io->counters().requests, 0u);
}

// After the engine is gone, each read it was handed has landed whole or never started, and
// nothing writes to the buffers any more: every destination holds the file's bytes or the fill
// it had before, and still does a while later. Returns how many landed.
size_t expect_settled_and_still(const std::string& path, const std::vector<ReadRequest>& requests,
                                const AlignedBuffer& buffer, uint8_t fill) {
  size_t landed = 0;
  for (const ReadRequest& r : requests) {
    const std::vector<uint8_t> file = buffered_pread(path, r.offset, r.length);
    if (std::memcmp(r.dest, file.data(), r.length) == 0) {
      ++landed;
      continue;
    }
    const bool untouched = std::all_of(r.dest, r.dest + r.length, [&](uint8_t b) { return b == fill; });
    EXPECT_TRUE(untouched) << "the read of " << r.length << " bytes at offset " << r.offset
                           << " left its buffer neither read nor untouched";
  }
  const std::vector<uint8_t> snapshot(buffer.data(), buffer.data() + buffer.size());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(std::memcmp(snapshot.data(), buffer.data(), buffer.size()), 0)
      << "a buffer was written after the engine was destroyed";
  return landed;
}

TEST_P(IoEngineTest, ClosingWithReadsInFlightWaitsForThem) {
  AlignedBuffer buffer;
  std::vector<ReadRequest> requests;
  {
    auto io = engine(4);
    requests = random_requests(200, io->alignment(), buffer, 7);
    std::memset(buffer.data(), 0xA5, buffer.size());
    io->submit(requests);
  }
  const size_t landed = expect_settled_and_still(path_, requests, buffer, 0xA5);
  // io_uring hands the first queue-depth reads to the kernel at submit, so some must have
  // landed; the pread pool may not have started any yet on a busy machine (those it had not
  // started are dropped, which expect_settled_and_still allows).
  if (GetParam() == IoBackend::IoUring) {
    EXPECT_GE(landed, 1u) << "the reads already handed to the kernel were not waited for";
  }
}

TEST_P(IoEngineTest, ClosingAfterInjectedErrorsMidBatchWaitsForTheReadsInFlight) {
  AlignedBuffer buffer;
  std::vector<ReadRequest> requests;
  std::atomic<int> failed{0};
  {
    auto io = engine(8);
    requests = random_requests(300, io->alignment(), buffer, 8);
    std::memset(buffer.data(), 0x5A, buffer.size());
    // Every 7th read fails: the batch is lost from the first failure on, while the reads
    // already submitted are still in flight when the engine goes.
    io->set_fault_hook([&](const ReadRequest& read, int64_t result) -> int64_t {
      const size_t index = static_cast<size_t>(read.dest - buffer.data()) / (16 * io->alignment());
      return index % 7 == 3 ? (++failed, -EIO) : result;
    });
    io->submit(requests);
    io->submit(requests);  // a second batch behind it, never waited for
  }
  expect_settled_and_still(path_, requests, buffer, 0x5A);
}

INSTANTIATE_TEST_SUITE_P(Backends, IoEngineTest,
                         ::testing::Values(IoBackend::IoUring, IoBackend::Pread),
                         [](const auto& test) { return std::string(io_backend_name(test.param)); });

TEST(IoEngine, AutoSettlesOnARealBackend) {
  const std::string path = testing::temp_path("auto.bin");
  std::ofstream(path) << std::string(8192, 'x');
  IoEngine io(path, IoBackend::Auto, 2);
  EXPECT_NE(io.backend(), IoBackend::Auto);
  EXPECT_EQ(io.backend() == IoBackend::Pread, !io.fallback_reason().empty());
  std::filesystem::remove(path);
}

TEST(IoEngine, MissingFileIsNamed) {
  const std::string path = testing::temp_path("does-not-exist.bin");
  const std::string message = error_of([&] { IoEngine io(path); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find(std::strerror(ENOENT)), std::string::npos) << message;
}

TEST(IoEngine, ParsesBackendNames) {
  EXPECT_EQ(parse_io_backend("auto"), IoBackend::Auto);
  EXPECT_EQ(parse_io_backend("uring"), IoBackend::IoUring);
  EXPECT_EQ(parse_io_backend("io_uring"), IoBackend::IoUring);
  EXPECT_EQ(parse_io_backend("pread"), IoBackend::Pread);
  EXPECT_THROW(parse_io_backend("mmap"), Error);
}

TEST(IoEngineAlignedBuffer, IsPageAlignedAndMovable) {
  AlignedBuffer a(10000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % kPageBytes, 0u);
  EXPECT_EQ(a.size(), 10000u);
  uint8_t* data = a.data();
  AlignedBuffer b = std::move(a);
  EXPECT_EQ(b.data(), data);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(AlignedBuffer(0).data(), nullptr);
  EXPECT_EQ(align_up(4097, 4096), 8192u);
  EXPECT_EQ(align_down(4097, 4096), 4096u);
}

TEST(IoEngineProbe, CreatesReusesAndNeverOverwritesTheTestFile) {
  const std::string path = testing::temp_path("probe.bin");
  EXPECT_TRUE(prepare_probe_file(path, 1 << 20));
  EXPECT_EQ(std::filesystem::file_size(path), 1u << 20);
  const std::vector<uint8_t> head = buffered_pread(path, 0, 4096);
  EXPECT_NE(head, std::vector<uint8_t>(4096, 0)) << "random data, not zeros";
  EXPECT_FALSE(prepare_probe_file(path, 512 << 10));  // big enough: reused as it is
  EXPECT_EQ(buffered_pread(path, 0, 4096), head);
  const std::string message = error_of([&] { prepare_probe_file(path, 2 << 20); });
  EXPECT_NE(message.find("never overwrites"), std::string::npos) << message;
  EXPECT_EQ(std::filesystem::file_size(path), 1u << 20);
  std::filesystem::remove(path);
}

TEST(IoEngineProbe, MeasuresEveryPointOfTheGrid) {
  const std::string path = testing::temp_path("probe-grid.bin");
  prepare_probe_file(path, 4 << 20);
  ProbeOptions options;
  options.path = path;
  options.file_bytes = 4 << 20;
  options.seconds_per_point = 0.02;
  options.request_sizes = {4096, 65536};
  options.queue_depths = {1, 4};
  int reported = 0;
  const ProbeResult r = probe_device(options, [&](const ThroughputPoint&) { ++reported; });
  std::filesystem::remove(path);
  EXPECT_EQ(reported, 4);
  ASSERT_EQ(r.profile.measured.size(), 4u);
  for (const ThroughputPoint& p : r.profile.measured) {
    EXPECT_GT(p.mib_per_s, 0);
    EXPECT_NEAR(p.iops * p.request_bytes / 1048576.0, p.mib_per_s, 1e-6 * p.mib_per_s);
  }
  EXPECT_NE(r.profile.source.find(path), std::string::npos);
  EXPECT_NE(r.backend, IoBackend::Auto);
}

}  // namespace
}  // namespace flashlm
