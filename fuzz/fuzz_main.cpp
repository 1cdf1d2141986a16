// One libFuzzer harness per entry point in fuzz_targets.h; FLASHLM_FUZZ_ENTRY (set by CMake)
// picks which. Errors the product reports on purpose are the expected outcome of bad input;
// everything else escapes and libFuzzer reports it as a crash.
#include <cstddef>
#include <cstdint>

#include "common/error.h"
#include "fuzz_targets.h"
#include "server/api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    flashlm::fuzz::FLASHLM_FUZZ_ENTRY(data, size);
  } catch (const flashlm::Error&) {
  } catch (const flashlm::ApiError&) {
  }
  return 0;
}
