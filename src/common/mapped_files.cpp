#include "common/mapped_files.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>

namespace flashlm {
namespace {

// A fixed table the signal handler can read without locks or allocation: a slot is in use
// while `address` is non-zero; its message is written before the address is published.
struct Slot {
  std::atomic<uintptr_t> address{0};
  size_t bytes = 0;
  char message[512] = {};
  size_t message_length = 0;
};
std::array<Slot, 64> slots;
std::mutex registry_mutex;
std::once_flag handler_once;

void write_all(const char* text, size_t length) {
  while (length > 0) {
    const ssize_t n = ::write(STDERR_FILENO, text, length);
    if (n <= 0) return;
    text += n;
    length -= static_cast<size_t>(n);
  }
}

void on_sigbus(int signal, siginfo_t* info, void*) {
  const auto fault = reinterpret_cast<uintptr_t>(info->si_addr);
  for (const Slot& slot : slots) {
    const uintptr_t start = slot.address.load(std::memory_order_acquire);
    if (start != 0 && fault >= start && fault - start < slot.bytes) {
      write_all(slot.message, slot.message_length);
      ::_exit(kMappedFileTruncatedExit);
    }
  }
  // Not one of ours: the default action (terminate with a core dump).
  ::signal(signal, SIG_DFL);
  ::raise(signal);
}

void install_handler() {
  struct sigaction action {};
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGBUS, &action, nullptr);
}

}  // namespace

void register_mapped_file(const void* address, size_t bytes, const std::string& path) {
  std::call_once(handler_once, install_handler);
  std::lock_guard lock(registry_mutex);
  for (Slot& slot : slots) {
    if (slot.address.load(std::memory_order_relaxed) != 0) continue;
    slot.bytes = bytes;
    const std::string message =
        "flashlm: error: '" + path +
        "' became shorter while it was in use (truncated or replaced on disk); its data can no "
        "longer be read. Restore the file (or convert it again) and restart.\n";
    slot.message_length = std::min(message.size(), sizeof(slot.message));
    std::memcpy(slot.message, message.data(), slot.message_length);
    slot.address.store(reinterpret_cast<uintptr_t>(address), std::memory_order_release);
    return;
  }
  // Table full: the mapping works as before, only without the message on truncation.
}

void unregister_mapped_file(const void* address) {
  std::lock_guard lock(registry_mutex);
  for (Slot& slot : slots) {
    if (slot.address.load(std::memory_order_relaxed) == reinterpret_cast<uintptr_t>(address)) {
      slot.address.store(0, std::memory_order_release);
    }
  }
}

void fault_in(const void* address, size_t bytes) {
  if (bytes == 0) return;
  const long page = ::sysconf(_SC_PAGESIZE);
  const uintptr_t begin = reinterpret_cast<uintptr_t>(address) / page * page;
  ::madvise(reinterpret_cast<void*>(begin), reinterpret_cast<uintptr_t>(address) + bytes - begin,
            MADV_WILLNEED);  // best effort: readahead of the whole range
  const auto* p = static_cast<const volatile uint8_t*>(address);
  uint8_t sink = 0;
  for (size_t at = 0; at < bytes; at += static_cast<size_t>(page)) sink ^= p[at];
  sink ^= p[bytes - 1];
  (void)sink;
}

}  // namespace flashlm
