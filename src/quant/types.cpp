#include "quant/types.h"

#include <array>

#include "common/error.h"

namespace flashlm {
namespace {

constexpr size_t kMaxTypeNumber = 40;

constexpr std::array<TypeTraits, kMaxTypeNumber> make_traits() {
  std::array<TypeTraits, kMaxTypeNumber> t{};
  auto set = [&](TensorType type, const char* name, uint32_t block, uint32_t bytes,
                 bool computable) {
    t[static_cast<size_t>(type)] = TypeTraits{name, block, bytes, computable};
  };
  set(TensorType::F32, "F32", 1, 4, true);
  set(TensorType::F16, "F16", 1, 2, true);
  set(TensorType::BF16, "BF16", 1, 2, true);
  set(TensorType::Q4_0, "Q4_0", 32, 18, true);
  set(TensorType::Q4_1, "Q4_1", 32, 20, true);
  set(TensorType::Q5_0, "Q5_0", 32, 22, true);
  set(TensorType::Q5_1, "Q5_1", 32, 24, true);
  set(TensorType::Q8_0, "Q8_0", 32, 34, true);
  set(TensorType::Q8_1, "Q8_1", 32, 36, false);
  set(TensorType::Q2_K, "Q2_K", 256, 84, false);
  set(TensorType::Q3_K, "Q3_K", 256, 110, false);
  set(TensorType::Q4_K, "Q4_K", 256, 144, true);
  set(TensorType::Q5_K, "Q5_K", 256, 176, true);
  set(TensorType::Q6_K, "Q6_K", 256, 210, true);
  set(TensorType::Q8_K, "Q8_K", 256, 292, false);
  set(TensorType::IQ2_XXS, "IQ2_XXS", 256, 66, false);
  set(TensorType::IQ2_XS, "IQ2_XS", 256, 74, false);
  set(TensorType::IQ3_XXS, "IQ3_XXS", 256, 98, false);
  set(TensorType::IQ1_S, "IQ1_S", 256, 50, false);
  set(TensorType::IQ4_NL, "IQ4_NL", 32, 18, false);
  set(TensorType::IQ3_S, "IQ3_S", 256, 110, false);
  set(TensorType::IQ2_S, "IQ2_S", 256, 82, false);
  set(TensorType::IQ4_XS, "IQ4_XS", 256, 136, false);
  set(TensorType::I8, "I8", 1, 1, false);
  set(TensorType::I16, "I16", 1, 2, false);
  set(TensorType::I32, "I32", 1, 4, false);
  set(TensorType::I64, "I64", 1, 8, false);
  set(TensorType::F64, "F64", 1, 8, false);
  set(TensorType::IQ1_M, "IQ1_M", 256, 56, false);
  set(TensorType::TQ1_0, "TQ1_0", 256, 54, false);
  set(TensorType::TQ2_0, "TQ2_0", 256, 66, false);
  return t;
}

constexpr std::array<TypeTraits, kMaxTypeNumber> kTraits = make_traits();
constexpr TypeTraits kUnknown{};

}  // namespace

const TypeTraits& type_traits(uint32_t type_number) {
  return type_number < kMaxTypeNumber ? kTraits[type_number] : kUnknown;
}

std::string type_name(TensorType type) {
  const TypeTraits& traits = type_traits(type);
  return traits.name ? traits.name : fmt::format("type#{}", static_cast<uint32_t>(type));
}

size_t row_bytes(TensorType type, int64_t n) {
  const TypeTraits& traits = type_traits(type);
  if (!traits.name) fail("unknown tensor type number {}", static_cast<uint32_t>(type));
  if (n < 0 || n % traits.block_size != 0) {
    fail("a row of {} elements is not a whole number of {} blocks ({} elements each)", n,
         traits.name, traits.block_size);
  }
  return static_cast<size_t>(n / traits.block_size) * traits.block_bytes;
}

}  // namespace flashlm
