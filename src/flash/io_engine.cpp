#include "flash/io_engine.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <new>
#include <thread>
#include <utility>

#include "common/error.h"

namespace flashlm {

const char* io_backend_name(IoBackend backend) {
  switch (backend) {
    case IoBackend::Auto:
      return "auto";
    case IoBackend::IoUring:
      return "io_uring";
    case IoBackend::Pread:
      return "pread";
  }
  return "?";
}

IoBackend parse_io_backend(const std::string& name) {
  if (name == "auto") return IoBackend::Auto;
  if (name == "uring" || name == "io_uring") return IoBackend::IoUring;
  if (name == "pread") return IoBackend::Pread;
  fail("unknown I/O backend '{}'; use auto, uring or pread", name);
}

AlignedBuffer::AlignedBuffer(size_t size) : size_(size) {
  if (size == 0) return;
  data_ = static_cast<uint8_t*>(std::aligned_alloc(kPageBytes, align_up(size, kPageBytes)));
  if (!data_) throw std::bad_alloc();
  // Committed now, not on first use: the process holds what its plan says from the start
  // (RSS flat over a run, and a budget the machine cannot give fails at start, not later).
  std::memset(data_, 0, align_up(size, kPageBytes));
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

namespace {

// A caller's request and how much of it is already in place.
struct Piece {
  ReadRequest request;
  uint32_t done = 0;

  ReadRequest remaining() const {
    return {request.offset + done, request.length - done, request.dest + done};
  }
};

enum class Outcome { Done, Again, Failed };

}  // namespace

// The part both backends share: turning each completed read into done, again, or an error.
class IoEngine::Queue {
 public:
  explicit Queue(IoEngine& engine) : engine_(engine) {}
  virtual ~Queue() = default;
  virtual void submit(std::span<const ReadRequest> requests) = 0;
  virtual void wait() = 0;
  virtual bool register_buffers(const std::vector<std::span<uint8_t>>& buffers) = 0;

 protected:
  // `result` is what the read of piece.remaining() returned: bytes, or -errno. Advances the
  // piece past a short read, or sets `error` to a message for the user.
  Outcome settle(Piece& piece, int64_t result, std::string& error) {
    const ReadRequest left = piece.remaining();
    if (engine_.fault_hook_) result = engine_.fault_hook_(left, result);
    if (result == -EINTR || result == -EAGAIN) {
      ++engine_.resubmits_;
      return Outcome::Again;
    }
    const ReadRequest& r = piece.request;
    if (result < 0) {
      error = fmt::format(
          "'{}': reading {} bytes at offset {} failed: {}; check the device (dmesg) "
          "and that the file is intact",
          engine_.path_, r.length, r.offset, std::strerror(static_cast<int>(-result)));
      return Outcome::Failed;
    }
    if (result > left.length) {
      error = fmt::format("'{}': a read of {} bytes at offset {} reported {} bytes", engine_.path_,
                          left.length, left.offset, result);
      return Outcome::Failed;
    }
    engine_.bytes_read_ += static_cast<uint64_t>(result);
    if (result == left.length) return Outcome::Done;
    // O_DIRECT can only continue from a block boundary; re-reading the start of a partly read
    // block is harmless. A read that cannot deliver one whole block has met the end of the file.
    const uint64_t progress = align_down(static_cast<uint64_t>(result), engine_.alignment_);
    if (progress == 0) {
      struct stat st {};  // not file_size(): this may run on a worker thread, which must not throw
      const std::string size =
          ::fstat(engine_.fd_, &st) == 0 ? fmt::format("{}", st.st_size) : "fewer";
      error = fmt::format(
          "'{}': unexpected end of file at offset {}: reading {} bytes at offset {} needs the "
          "file to be at least {} bytes, it has {}; the file is truncated or not the one expected",
          engine_.path_, left.offset + static_cast<uint64_t>(result), r.length, r.offset,
          r.offset + r.length, size);
      return Outcome::Failed;
    }
    piece.done += static_cast<uint32_t>(progress);
    ++engine_.resubmits_;
    return Outcome::Again;
  }

  const IoEngine& engine() const { return engine_; }

 private:
  IoEngine& engine_;
};

namespace {

// io_uring: one ring whose submission queue is as deep as the engine's queue depth, driven by
// the caller's thread, which refills each slot as its read completes.
class UringQueue final : public IoEngine::Queue {
 public:
  UringQueue(IoEngine& engine, unsigned depth) : Queue(engine), slots_(depth) {
    if (const int ret = io_uring_queue_init(depth, &ring_, 0); ret < 0) {
      fail("io_uring is not available ({}): use the pread backend (--io pread)",
           std::strerror(-ret));
    }
    io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
    const bool can_read = probe && io_uring_opcode_supported(probe, IORING_OP_READ);
    io_uring_free_probe(probe);
    if (!can_read) {
      io_uring_queue_exit(&ring_);
      fail(
          "this kernel's io_uring cannot read files (needs Linux 5.6): use the pread backend "
          "(--io pread)");
    }
    for (unsigned i = depth; i > 0; --i) free_slots_.push_back(i - 1);
    // A registered file spares the kernel a file-table lookup and reference count per read.
    const int fd = engine.fd();
    fixed_file_ = io_uring_register_files(&ring_, &fd, 1) == 0;
  }

  ~UringQueue() override {
    // The callers' buffers may be freed right after this, so the kernel must be done with
    // every read it was handed. Reads prepared but never submitted go with the ring (the
    // kernel never saw them); the submitted ones are waited for, one completion at a time,
    // with no new submission that could fail and end the drain early.
    waiting_.clear();
    error_ = "the engine was closed with reads in flight";
    unsigned submitted = in_flight_ - io_uring_sq_ready(&ring_);
    for (int failures = 0; submitted > 0;) {
      io_uring_cqe* cqe = nullptr;
      const int ret = io_uring_wait_cqe(&ring_, &cqe);
      if (ret == 0) {
        complete(cqe);
        --submitted;
      } else if (ret != -EINTR && ret != -EAGAIN && ++failures == 1000) {
        // Not seen in practice: a ring that cannot report completions any more.
        std::fprintf(stderr, "flashlm: '%s': io_uring cannot wait for %u reads in flight (%s)\n",
                     engine().path().c_str(), submitted, std::strerror(-ret));
        break;
      }
    }
    io_uring_queue_exit(&ring_);
  }

  void submit(std::span<const ReadRequest> requests) override {
    for (const ReadRequest& r : requests) waiting_.push_back({r});
    prepare();
    submit_prepared();
  }

  // Each completion's slot is refilled and submitted at once, one read per system call, as fio
  // does. Refilling a burst of freed slots in one submission lets the device's queue drain
  // between bursts: 4 KiB reads at depth 32 measured 12% slower that way (bench/probe_vs_fio.sh).
  void wait() override {
    while (in_flight_ > 0) {
      submit_prepared();
      io_uring_cqe* cqe = nullptr;
      const int ret = io_uring_wait_cqe(&ring_, &cqe);
      if (ret == -EINTR || ret == -EAGAIN) continue;
      check(ret, "wait");
      complete(cqe);
      prepare();  // normally just the slot this read freed
    }
    if (!error_.empty()) throw Error(std::exchange(error_, {}));
  }

  bool register_buffers(const std::vector<std::span<uint8_t>>& buffers) override {
    if (in_flight_ > 0 || !waiting_.empty()) {
      fail("'{}': cannot change registered buffers while reads are in flight; wait() first",
           engine().path());
    }
    if (!registered_.empty()) io_uring_unregister_buffers(&ring_);
    registered_.clear();
    for (std::span<uint8_t> b : buffers) registered_.push_back({b.data(), b.size()});
    if (registered_.empty()) return true;
    if (io_uring_register_buffers(&ring_, registered_.data(),
                                  static_cast<unsigned>(registered_.size())) < 0) {
      registered_.clear();
      return false;
    }
    return true;
  }

 private:
  // Queues reads for waiting pieces while slots are free.
  void prepare() {
    while (!free_slots_.empty() && !waiting_.empty() && error_.empty()) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (!sqe) break;  // the ring is full until the next submit
      const uint32_t slot = free_slots_.back();
      free_slots_.pop_back();
      slots_[slot] = waiting_.front();
      waiting_.pop_front();
      const ReadRequest r = slots_[slot].remaining();
      if (const int index = registered_index(r); index >= 0) {
        io_uring_prep_read_fixed(sqe, engine().fd(), r.dest, r.length, r.offset, index);
      } else {
        io_uring_prep_read(sqe, engine().fd(), r.dest, r.length, r.offset);
      }
      if (fixed_file_) {
        sqe->fd = 0;  // index into the registered files
        sqe->flags |= IOSQE_FIXED_FILE;
      }
      io_uring_sqe_set_data64(sqe, slot);
      ++in_flight_;
    }
  }

  // Hands the queued reads to the kernel. One that is momentarily refused (EAGAIN, EBUSY)
  // stays queued and goes with the next call.
  void submit_prepared() {
    if (io_uring_sq_ready(&ring_) > 0) check(io_uring_submit(&ring_), "submit");
  }

  // Settles one completed read and frees its slot.
  void complete(io_uring_cqe* cqe) {
    const auto slot = static_cast<uint32_t>(io_uring_cqe_get_data64(cqe));
    const int result = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    free_slots_.push_back(slot);
    --in_flight_;
    if (!error_.empty()) return;  // draining after a failure: the batch is lost anyway
    Piece& piece = slots_[slot];
    switch (settle(piece, result, error_)) {
      case Outcome::Done:
        break;
      case Outcome::Again:
        waiting_.push_front(piece);
        break;
      case Outcome::Failed:
        waiting_.clear();
        break;
    }
  }

  int registered_index(const ReadRequest& r) const {
    for (size_t i = 0; i < registered_.size(); ++i) {
      const auto* base = static_cast<const uint8_t*>(registered_[i].iov_base);
      if (r.dest >= base && r.dest + r.length <= base + registered_[i].iov_len) {
        return static_cast<int>(i);
      }
    }
    return -1;
  }

  // Interrupted or momentarily out of kernel resources: the prepared reads go with the next
  // call. Anything else means the ring itself is broken.
  void check(int ret, const char* what) const {
    if (ret >= 0 || ret == -EINTR || ret == -EAGAIN || ret == -EBUSY) return;
    fail("'{}': io_uring {} failed: {}; try the pread backend (--io pread)", engine().path(), what,
         std::strerror(-ret));
  }

  io_uring ring_{};
  std::vector<Piece> slots_;  // the read in flight in each submission slot
  std::vector<uint32_t> free_slots_;
  std::deque<Piece> waiting_;  // not yet queued; resubmitted remainders go first
  unsigned in_flight_ = 0;
  std::vector<iovec> registered_;
  bool fixed_file_ = false;
  std::string error_;  // the first failure of the current batch
};

// A pool of `depth` threads, each doing one blocking pread at a time: reads progress in the
// background between submit() and wait().
class PreadQueue final : public IoEngine::Queue {
 public:
  PreadQueue(IoEngine& engine, unsigned depth) : Queue(engine) {
    for (unsigned i = 0; i < depth; ++i) workers_.emplace_back([this] { work(); });
  }

  ~PreadQueue() override {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
      waiting_.clear();
    }
    work_ready_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  void submit(std::span<const ReadRequest> requests) override {
    {
      std::lock_guard lock(mutex_);
      for (const ReadRequest& r : requests) waiting_.push_back({r});
      outstanding_ += requests.size();
    }
    work_ready_.notify_all();
  }

  void wait() override {
    std::unique_lock lock(mutex_);
    all_done_.wait(lock, [this] { return outstanding_ == 0; });
    if (!error_.empty()) throw Error(std::exchange(error_, {}));
  }

  bool register_buffers(const std::vector<std::span<uint8_t>>& buffers) override {
    return buffers.empty();
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      work_ready_.wait(lock, [this] { return stop_ || !waiting_.empty(); });
      if (stop_) return;
      Piece piece = waiting_.front();
      waiting_.pop_front();
      lock.unlock();
      std::string error;
      read(piece, error);
      lock.lock();
      if (!error.empty() && error_.empty()) {
        error_ = std::move(error);
        outstanding_ -= waiting_.size();  // the rest of the batch is not worth reading
        waiting_.clear();
      }
      if (--outstanding_ == 0) all_done_.notify_all();
    }
  }

  void read(Piece& piece, std::string& error) {
    for (;;) {
      const ReadRequest r = piece.remaining();
      const ssize_t n = ::pread(engine().fd(), r.dest, r.length, static_cast<off_t>(r.offset));
      switch (settle(piece, n < 0 ? -errno : n, error)) {
        case Outcome::Done:
        case Outcome::Failed:
          return;
        case Outcome::Again:
          break;
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable work_ready_, all_done_;
  std::deque<Piece> waiting_;
  size_t outstanding_ = 0;  // submitted and not yet finished (waiting or being read)
  std::string error_;       // the first failure of the current batch
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

// The file's O_DIRECT alignment as the kernel reports it (Linux 6.1+); a page otherwise, which
// is a multiple of every common block size.
uint64_t direct_io_alignment(int fd) {
  struct statx stx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
      (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align > 0) {
    return std::max(stx.stx_dio_offset_align, stx.stx_dio_mem_align);
  }
  return kPageBytes;
}

using Clock = std::chrono::steady_clock;

// Adds the time from construction to destruction to `total`, exceptions included.
class Stopwatch {
 public:
  explicit Stopwatch(double& total) : total_(total), start_(Clock::now()) {}
  ~Stopwatch() { total_ += std::chrono::duration<double>(Clock::now() - start_).count(); }
  Stopwatch(const Stopwatch&) = delete;
  Stopwatch& operator=(const Stopwatch&) = delete;

 private:
  double& total_;
  Clock::time_point start_;
};

}  // namespace

int open_uncached(const std::string& path, int flags, unsigned mode) {
  return ::open(path.c_str(), flags | O_DIRECT, static_cast<mode_t>(mode));
}

IoEngine::IoEngine(const std::string& path, IoBackend backend, unsigned queue_depth)
    : path_(path), queue_depth_(queue_depth) {
  if (queue_depth == 0 || queue_depth > 4096) {
    fail("'{}': queue depth {} is out of range; use 1 to 4096", path, queue_depth);
  }
  fd_ = open_uncached(path, O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    if (errno == EINVAL) {
      fail(
          "'{}': the file system does not support direct I/O (O_DIRECT); put the file on a "
          "local disk",
          path);
    }
    fail("cannot open '{}': {}", path, std::strerror(errno));
  }
  alignment_ = direct_io_alignment(fd_);
  try {
    if (backend != IoBackend::Pread) {
      try {
        queue_ = std::make_unique<UringQueue>(*this, queue_depth);
        backend_ = IoBackend::IoUring;
      } catch (const Error& e) {
        if (backend == IoBackend::IoUring) throw;
        fallback_reason_ = e.what();
      }
    }
    if (!queue_) {
      queue_ = std::make_unique<PreadQueue>(*this, queue_depth);
      backend_ = IoBackend::Pread;
    }
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

IoEngine::~IoEngine() {
  queue_.reset();
  ::close(fd_);
}

uint64_t IoEngine::file_size() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) fail("cannot stat '{}': {}", path_, std::strerror(errno));
  return static_cast<uint64_t>(st.st_size);
}

void IoEngine::submit(std::span<const ReadRequest> requests) {
  for (const ReadRequest& r : requests) {
    if (r.offset % alignment_ != 0 || r.length % alignment_ != 0 ||
        reinterpret_cast<uintptr_t>(r.dest) % alignment_ != 0) {
      fail(
          "'{}': read of {} bytes at offset {} into {} is not aligned to {} bytes as direct I/O "
          "requires; round with align_down/align_up and read into an AlignedBuffer",
          path_, r.length, r.offset, static_cast<const void*>(r.dest), alignment_);
    }
  }
  requests_ += requests.size();
  Stopwatch stopwatch(wait_seconds_);
  queue_->submit(requests);
}

void IoEngine::wait() {
  Stopwatch stopwatch(wait_seconds_);
  queue_->wait();
}

void IoEngine::read_all(std::span<const ReadRequest> requests) {
  submit(requests);
  wait();
}

bool IoEngine::register_buffers(const std::vector<std::span<uint8_t>>& buffers) {
  return queue_->register_buffers(buffers);
}

void IoEngine::unregister_buffers() { queue_->register_buffers({}); }

void IoEngine::set_fault_hook(IoFaultHook hook) { fault_hook_ = std::move(hook); }

IoCounters IoEngine::counters() const {
  return {bytes_read_.load(), requests_.load(), resubmits_.load(), wait_seconds_};
}

void IoEngine::reset_counters() {
  bytes_read_ = 0;
  requests_ = 0;
  resubmits_ = 0;
  wait_seconds_ = 0;
}

}  // namespace flashlm
