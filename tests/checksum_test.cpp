#include "common/checksum.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

namespace flashlm {
namespace {

TEST(Checksum, KnownValues) {
  // The CRC-32C check value (RFC 3720's parameters): "123456789" -> 0xE3069283.
  const char* digits = "123456789";
  EXPECT_EQ(crc32c(digits, 9), 0xE3069283u);
  EXPECT_EQ(crc32c_portable(digits, 9), 0xE3069283u);
  EXPECT_EQ(crc32c(digits, 0), 0u);
  // 32 zero bytes: RFC 3720 B.4.
  const std::vector<uint8_t> zeros(32, 0);
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
}

TEST(Checksum, InstructionsMatchTheTableAtEveryLengthAndAlignment) {
  std::mt19937 rng(7);
  std::vector<uint8_t> data(4096 + 16);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t offset = 0; offset < 9; ++offset) {
    for (size_t n : {0, 1, 7, 8, 9, 15, 16, 63, 64, 65, 1000, 4096}) {
      ASSERT_EQ(crc32c(data.data() + offset, n), crc32c_portable(data.data() + offset, n))
          << "offset " << offset << ", " << n << " bytes";
    }
  }
}

TEST(Checksum, ContinuesARunningValue) {
  std::vector<uint8_t> data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 31 + 7);
  const uint32_t whole = crc32c(data.data(), data.size());
  for (size_t cut : {0, 1, 8, 333, 999, 1000}) {
    EXPECT_EQ(crc32c(data.data() + cut, data.size() - cut, crc32c(data.data(), cut)), whole);
    EXPECT_EQ(crc32c_portable(data.data() + cut, data.size() - cut,
                              crc32c_portable(data.data(), cut)),
              whole);
  }
}

}  // namespace
}  // namespace flashlm
