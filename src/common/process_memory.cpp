#include "common/process_memory.h"

#include <malloc.h>

#include <fstream>
#include <string>

namespace flashlm {
namespace {

uint64_t status_kib(const char* field) {
  std::ifstream status("/proc/self/status");
  const std::string prefix = std::string(field) + ":";
  for (std::string line; std::getline(status, line);) {
    if (line.rfind(prefix, 0) == 0) return std::stoull(line.substr(prefix.size())) * 1024;
  }
  return 0;
}

}  // namespace

uint64_t resident_set_bytes() { return status_kib("VmRSS"); }
uint64_t peak_resident_set_bytes() { return status_kib("VmHWM"); }

void return_freed_memory_promptly() {
  // glibc raises its mmap threshold up to 32 MiB after a large free, after which freed layer
  // buffers stay in the heap; a fixed threshold keeps every buffer of 256 KiB or more its own
  // mapping, returned when freed.
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
}

}  // namespace flashlm
