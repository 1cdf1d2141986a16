// The process's own memory, as the kernel counts it (/proc/self/status).
#pragma once

#include <cstdint>

namespace flashlm {

// Pages of this process in DRAM now (VmRSS: anonymous and file-backed), in bytes; 0 if unknown.
uint64_t resident_set_bytes();
// The most it has held (VmHWM), in bytes; 0 if unknown.
uint64_t peak_resident_set_bytes();
// Makes freed large buffers go back to the system at once (fixed mmap threshold, no dynamic
// raising), so a process that frees and allocates layer buffers keeps the RSS its plan says.
void return_freed_memory_promptly();

}  // namespace flashlm
