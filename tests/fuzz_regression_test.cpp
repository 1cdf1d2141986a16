// Replays every input the fuzzers (fuzz/, scripts/fuzz.sh) once crashed on, through the same
// entry points: each must now load or be refused with flashlm's own error, never crash.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <typeinfo>
#include <vector>

#include "../fuzz/fuzz_targets.h"
#include "common/error.h"
#include "server/api.h"

namespace flashlm {
namespace {

namespace fs = std::filesystem;

const fs::path kRegressions = fs::path(FLASHLM_SOURCE_DIR) / "tests/data/fuzz_regressions";

std::vector<uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class FuzzRegression : public ::testing::TestWithParam<std::string> {};

TEST_P(FuzzRegression, EveryInputLoadsOrFailsCleanly) {
  const std::string harness = GetParam();
  const fuzz::Entry entry = fuzz::entry_by_name(harness);
  ASSERT_NE(entry, nullptr) << harness;
  if (harness == "tokenizer_text" &&
      !fs::exists(fs::path(FLASHLM_SOURCE_DIR) / "models/SmolLM2-135M-Instruct.Q4_1.gguf")) {
    GTEST_SKIP() << "the tokenizer inputs need models/SmolLM2-135M-Instruct.Q4_1.gguf "
                    "(scripts/fetch_models.py)";
  }
  const fs::path dir = kRegressions / harness;
  ASSERT_TRUE(fs::is_directory(dir)) << dir;
  for (const fs::directory_entry& file : fs::directory_iterator(dir)) {
    if (!file.is_regular_file() || file.path().filename() == ".gitkeep") continue;
    const std::vector<uint8_t> bytes = read_bytes(file.path());
    try {
      entry(bytes.data(), bytes.size());
    } catch (const Error&) {
    } catch (const ApiError&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << file.path() << " threw " << typeid(e).name() << ": " << e.what()
                    << " instead of a flashlm::Error";
    }
  }
}

// The entry points must still refuse garbage with an Error, or the test above would pass
// vacuously for a harness that ignored its input.
TEST(FuzzRegression, GarbageIsRefusedWithAnError) {
  const uint8_t garbage[] = "not a model file at all, just text";
  EXPECT_THROW(fuzz::gguf_file(garbage, sizeof garbage), Error);
  EXPECT_THROW(fuzz::flm_file(garbage, sizeof garbage), Error);
  EXPECT_THROW(fuzz::sparsity_file(garbage, sizeof garbage), Error);
  const uint8_t request[] = "\x00{\"prompt\": 5}";
  EXPECT_THROW(fuzz::server_request(request, sizeof request - 1), ApiError);
}

INSTANTIATE_TEST_SUITE_P(Harnesses, FuzzRegression,
                         ::testing::Values("gguf_file", "flm_file", "tokenizer_text",
                                           "server_request", "sparsity_file"));

}  // namespace
}  // namespace flashlm
