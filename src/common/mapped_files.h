// Memory-mapped model files and what happens when one shrinks under us.
//
// Reading a page of a mapping past the end of a file that was truncated after it was mapped
// raises SIGBUS, which would kill the process with no word of why. Every mapping of a model
// file is registered here; a SIGBUS inside one of them ends the process with a message naming
// the file (exit status kMappedFileTruncatedExit), and any other SIGBUS keeps its default
// action. Execution cannot continue after such a fault: the instruction would fault again.
#pragma once

#include <cstddef>
#include <string>

namespace flashlm {

constexpr int kMappedFileTruncatedExit = 74;  // EX_IOERR

// Registers [address, address + bytes) as a mapping of `path`; installs the handler once.
void register_mapped_file(const void* address, size_t bytes, const std::string& path);
void unregister_mapped_file(const void* address);

// Reads every page of [address, address + bytes) of a mapping in now, so that the process
// holds at start what it will hold later (a flat RSS, a plan that matches the peak) rather
// than faulting the pages in one by one as they are first used.
void fault_in(const void* address, size_t bytes);

}  // namespace flashlm
