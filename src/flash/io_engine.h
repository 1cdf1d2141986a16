// The flash read engine: scattered O_DIRECT reads of one file, many in flight at once.
//
// Flash delivers its throughput only to large requests issued in parallel (see `flashlm probe`),
// and the DRAM budget is only honest if the page cache is bypassed; so every read here is
// O_DIRECT, queued up to a fixed depth, on io_uring or, where that is unavailable, on a pool of
// threads calling pread. Every read is checked: a short read continues where it stopped, and
// end of file or an I/O error throws; no caller ever gets a partly filled buffer as success.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace flashlm {

enum class IoBackend {
  Auto,     // io_uring where the kernel allows it, else the pread pool
  IoUring,  // io_uring only; construction fails where it is unavailable
  Pread,    // a pool of threads, one blocking pread each
};
const char* io_backend_name(IoBackend backend);
// "auto", "uring" (or "io_uring") or "pread", as the --io flag takes them.
IoBackend parse_io_backend(const std::string& name);

// Opens `path` (open(2) flags and mode) for I/O that bypasses the page cache; -1 with errno
// set on failure. On Linux that is O_DIRECT. This is the one place a port supplies its own
// (macOS: open, then fcntl(fd, F_NOCACHE, 1)); the pread backend (IoBackend::Pread) is the
// read path for systems without io_uring.
int open_uncached(const std::string& path, int flags, unsigned mode = 0);

// Page alignment satisfies the O_DIRECT rules of every device with blocks of up to 4 KiB.
constexpr uint64_t kPageBytes = 4096;

constexpr uint64_t align_down(uint64_t x, uint64_t alignment) { return x / alignment * alignment; }
constexpr uint64_t align_up(uint64_t x, uint64_t alignment) {
  return (x + alignment - 1) / alignment * alignment;
}

// A page-aligned heap allocation that O_DIRECT reads can land in. Move-only.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size);  // zeroed, its pages committed
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<uint8_t> span() { return {data_, size_}; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// `length` bytes of the file from `offset` into `dest`. Offset, length and dest must be
// multiples of IoEngine::alignment().
struct ReadRequest {
  uint64_t offset = 0;
  uint32_t length = 0;
  uint8_t* dest = nullptr;
};

// Called for every completed read (a request, or the remainder of one after a short read) with
// its result: bytes read, or -errno. Returns the result the engine should act on, so a test can
// turn a success into -EIO or a short count. With the pread backend it runs on worker threads.
using IoFaultHook = std::function<int64_t(const ReadRequest& read, int64_t result)>;

struct IoCounters {
  uint64_t bytes_read = 0;  // bytes the reads transferred, re-reads after short reads included
  uint64_t requests = 0;    // requests submitted by callers
  uint64_t resubmits = 0;   // reads issued again after a short read or EINTR/EAGAIN
  double wait_seconds = 0;  // time callers spent in submit(), wait() and read_all()
};

// Reads one file. Not thread-safe: one thread at a time submits and waits.
class IoEngine {
 public:
  // Opens `path` with O_DIRECT. `queue_depth` is the most reads in flight at once.
  explicit IoEngine(const std::string& path, IoBackend backend = IoBackend::Auto,
                    unsigned queue_depth = 32);
  ~IoEngine();  // waits for reads in flight, so their buffers are never written after it
  IoEngine(const IoEngine&) = delete;
  IoEngine& operator=(const IoEngine&) = delete;

  const std::string& path() const { return path_; }
  int fd() const { return fd_; }
  uint64_t file_size() const;  // asks the file system each time: the file may change
  // O_DIRECT alignment of offsets, lengths and buffer addresses for this file.
  uint64_t alignment() const { return alignment_; }
  unsigned queue_depth() const { return queue_depth_; }
  // The backend in use: IoUring or Pread, never Auto.
  IoBackend backend() const { return backend_; }
  // Why Auto settled on the pread pool; empty when it did not fall back.
  const std::string& fallback_reason() const { return fallback_reason_; }

  // Starts the reads and returns; at most queue_depth() are in flight, the rest start as
  // earlier ones complete, which happens inside wait() (and further submit() calls) with
  // io_uring, and in the background with the pread pool. The buffers must stay alive and
  // untouched until wait() returns or throws.
  void submit(std::span<const ReadRequest> requests);
  // Blocks until every submitted read is complete. On the first failure it stops issuing the
  // remaining reads, waits for those in flight and throws flashlm::Error naming the file,
  // offset, length and cause; the contents of all of that batch's buffers are then unspecified.
  void wait();
  // submit() then wait().
  void read_all(std::span<const ReadRequest> requests);

  // Pins buffers for the kernel so reads into them skip mapping their pages each time
  // (io_uring only; replaces any earlier set). Returns false where that is not possible (pread
  // backend, memory-lock limit); reads then work as before. The buffers must outlive the
  // registration: until unregister_buffers() or the engine's end. No reads may be in flight.
  bool register_buffers(const std::vector<std::span<uint8_t>>& buffers);
  void unregister_buffers();

  void set_fault_hook(IoFaultHook hook);

  IoCounters counters() const;
  void reset_counters();

  // The backends' common base; an implementation detail of io_engine.cpp.
  class Queue;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t alignment_ = kPageBytes;
  unsigned queue_depth_ = 0;
  IoBackend backend_ = IoBackend::Auto;
  std::string fallback_reason_;
  IoFaultHook fault_hook_;
  std::atomic<uint64_t> bytes_read_{0}, requests_{0}, resubmits_{0};
  double wait_seconds_ = 0;
  std::unique_ptr<Queue> queue_;
};

}  // namespace flashlm
