// CRC-32C (Castagnoli), used to detect corrupt bundle data in .flm files.
#pragma once

#include <cstddef>
#include <cstdint>

namespace flashlm {

// Continues a running CRC: crc32c(b, crc32c(a)) == crc32c(a followed by b). Start with 0.
// Uses the CPU's CRC32C instructions where it has them (picked at run time).
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

// The same value a byte at a time through a table: the twin the tests hold crc32c to.
uint32_t crc32c_portable(const void* data, size_t size, uint32_t crc = 0);

}  // namespace flashlm
