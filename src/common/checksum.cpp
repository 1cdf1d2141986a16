#include "common/checksum.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#elif defined(__aarch64__)
#include <arm_acle.h>
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace flashlm {
namespace {

// One byte at a time through a table: the portable twin of the instructions below.
uint32_t crc32c_table(const uint8_t* p, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
      t[i] = c;
    }
    return t;
  }();
  for (; size > 0; --size, ++p) crc = table[(crc ^ *p) & 0xFF] ^ (crc >> 8);
  return crc;
}

// The CPU's CRC32C instructions, 8 bytes per step, where the CPU has them (x86 SSE4.2, ARMv8
// CRC32). Compiled for that extension alone and chosen at run time, so a portable binary uses
// them too.
#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_hardware(const uint8_t* p, size_t size,
                                                           uint32_t crc) {
  uint64_t c = crc;
  for (; size >= 8; size -= 8, p += 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
  }
  crc = static_cast<uint32_t>(c);
  for (; size > 0; --size, ++p) crc = _mm_crc32_u8(crc, *p);
  return crc;
}
bool has_crc32c_instructions() { return __builtin_cpu_supports("sse4.2"); }
#elif defined(__aarch64__)
__attribute__((target("+crc"))) uint32_t crc32c_hardware(const uint8_t* p, size_t size,
                                                         uint32_t crc) {
  for (; size >= 8; size -= 8, p += 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    crc = __crc32cd(crc, word);
  }
  for (; size > 0; --size, ++p) crc = __crc32cb(crc, *p);
  return crc;
}
bool has_crc32c_instructions() { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#else
uint32_t crc32c_hardware(const uint8_t* p, size_t size, uint32_t crc) {
  return crc32c_table(p, size, crc);
}
bool has_crc32c_instructions() { return false; }
#endif

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  static const bool hardware = has_crc32c_instructions();
  const auto* p = static_cast<const uint8_t*>(data);
  return ~(hardware ? crc32c_hardware(p, size, ~crc) : crc32c_table(p, size, ~crc));
}

uint32_t crc32c_portable(const void* data, size_t size, uint32_t crc) {
  return ~crc32c_table(static_cast<const uint8_t*>(data), size, ~crc);
}

}  // namespace flashlm
