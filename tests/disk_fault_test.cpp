// What the disk can do to us: a .flm file cut short while the engine streams from it, and a
// conversion that runs out of space. Both must end in a flashlm::Error that names the file,
// never a crash, garbage logits, or a half-written file that looks like a model.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>

#include "common/error.h"
#include "common/mapped_files.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "flash/flash_layout.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

namespace fs = std::filesystem;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Files in `dir` whose name starts with `stem`: the output and any temporary twin of it.
std::vector<std::string> files_named_like(const fs::path& dir, const std::string& stem) {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().filename().string().rfind(stem, 0) == 0) out.push_back(entry.path());
  }
  return out;
}

TEST(DiskFaults, FlmTruncatedWhileStreamingFailsNamingTheFile) {
  const std::string gguf = testing::temp_path("cut.gguf");
  const std::string flm = testing::temp_path("cut.flm");
  testing::write_tiny_model(gguf, {.n_layers = 3, .weight_type = TensorType::Q8_0});
  convert_to_flm(gguf, flm, {.force = true});
  auto model = Model::load(flm);
  Engine engine(*model, {.threads = 2, .context_size = 32, .max_batch = 4, .mode = "naive"});
  const int32_t token = 65;
  ASSERT_NO_THROW(engine.transformer().forward(std::span(&token, 1)));

  // Cut the file inside layer 1's bundles: layer 0 still reads, layer 1 meets the end.
  const FlmLayer& layer1 = model->flash->layers()[1];
  ASSERT_EQ(::truncate(flm.c_str(), static_cast<off_t>(layer1.offset + layer1.bytes / 2)), 0);
  try {
    engine.transformer().forward(std::span(&token, 1));
    FAIL() << "the forward pass read bundles past the end of the truncated file";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), flm)) << e.what();
    EXPECT_TRUE(contains(e.what(), "end of file") || contains(e.what(), "truncated")) << e.what();
  }
}

// mmap mode reads the bundles through a mapping: a page past the new end of the file raises
// SIGBUS, which must end the process with a message naming the file, not a bare crash.
TEST(DiskFaultsDeathTest, FlmTruncatedUnderMmapEndsWithAMessageNamingTheFile) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::string gguf = testing::temp_path("cut-mmap.gguf");
  const std::string flm = testing::temp_path("cut-mmap.flm");
  testing::write_tiny_model(gguf, {.n_layers = 3, .weight_type = TensorType::Q8_0});
  convert_to_flm(gguf, flm, {.force = true});
  EXPECT_EXIT(
      {
        auto model = Model::load(flm);
        Engine engine(*model, {.threads = 1, .context_size = 32, .max_batch = 4, .mode = "mmap"});
        const int32_t token = 65;
        const FlmLayer& layer1 = model->flash->layers()[1];
        if (::truncate(flm.c_str(), static_cast<off_t>(layer1.offset)) != 0) std::_Exit(3);
        engine.transformer().forward(std::span(&token, 1));
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(kMappedFileTruncatedExit), "became shorter while it was in use");
}

// Writes of a conversion fail part-way; the output must not appear and no temporary stays.
void expect_clean_failure(const std::string& gguf, const std::string& flm, const char* reason) {
  try {
    convert_to_flm(gguf, flm, {.force = true});
    FAIL() << "conversion should run out of space";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), flm)) << e.what();
    EXPECT_TRUE(contains(e.what(), reason)) << e.what();
  }
  EXPECT_EQ(files_named_like(fs::path(flm).parent_path(), fs::path(flm).filename()),
            std::vector<std::string>{});
}

// A model whose .flm is several hundred KiB, so a small limit stops it in the bundle region.
std::string model_bigger_than_limits() {
  const std::string gguf = testing::temp_path("big.gguf");
  if (!fs::exists(gguf)) {
    testing::write_tiny_model(gguf, {.n_layers = 4, .d_ff = 512, .weight_type = TensorType::F32});
  }
  return gguf;
}

TEST(DiskFaults, ConvertPastTheFileSizeLimitLeavesNoFile) {
  const std::string gguf = model_bigger_than_limits();
  const std::string flm = testing::temp_path("limited.flm");
  // RLIMIT_FSIZE makes write() fail with EFBIG once the file would pass the limit, the way a
  // quota does; SIGXFSZ, which would kill the process first, is ignored as a daemon would.
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit limited = old;
  limited.rlim_cur = 256 * 1024;
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limited), 0);
  expect_clean_failure(gguf, flm, "File too large");
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  // With the limit gone the same conversion succeeds: the failure was the limit's.
  convert_to_flm(gguf, flm, {.force = true});
  EXPECT_NO_THROW(FlashModelFile::open(flm)->verify());
}

TEST(DiskFaults, ConvertOntoAFullFilesystemLeavesNoFile) {
  const std::string gguf = model_bigger_than_limits();
  const fs::path dir = testing::temp_path("full-fs");
  fs::create_directories(dir);
  // A 256 KiB tmpfs is a disk that fills up; mounting one needs root (CAP_SYS_ADMIN).
  if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=256k") != 0) {
    GTEST_SKIP() << "cannot mount a small tmpfs here (needs root): " << std::strerror(errno);
  }
  const std::string flm = (dir / "full.flm").string();
  expect_clean_failure(gguf, flm, "No space left on device");
  EXPECT_TRUE(fs::is_empty(dir));
  ::umount2(dir.c_str(), MNT_DETACH);
}

}  // namespace
}  // namespace flashlm
