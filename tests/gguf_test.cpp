#include "gguf/gguf.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "common/error.h"
#include "gguf/gguf_writer.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

using testing::temp_path;

std::vector<uint8_t> small_file() {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_uint32("llama.block_count", 7);
  w.add_float32("llama.rope.freq_base", 10000.f);
  w.add_bool("flag", true);
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b", "c"});
  w.add_float32_array("scores", {0.5f, -1.f});
  w.add_int32_array("types", {1, 2, 3});
  std::vector<uint8_t> data(4 * 8);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i);
  w.add_tensor("t.weight", TensorType::F32, {4, 2}, data);
  w.add_tensor("q.weight", TensorType::Q8_0, {32, 1}, std::vector<uint8_t>(34, 7));
  return w.serialize();
}

std::string write_bytes(const std::string& name, const std::vector<uint8_t>& bytes) {
  const std::string path = temp_path(name);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

// Expects opening `bytes` to fail with a flashlm::Error whose message contains `needle`.
void expect_error(const std::vector<uint8_t>& bytes, const std::string& needle) {
  const std::string path = write_bytes("bad.gguf", bytes);
  try {
    GgufFile::open(path);
    FAIL() << "opening the file should have failed with: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << "names the file: "
                                                                     << e.what();
  }
}

// Offset of the first occurrence of `needle` in `bytes`.
size_t find(const std::vector<uint8_t>& bytes, const std::string& needle) {
  auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  return static_cast<size_t>(it - bytes.begin());
}

TEST(Gguf, RoundTripMetadataAndTensors) {
  auto f = GgufFile::open(write_bytes("ok.gguf", small_file()));
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_uint("llama.block_count"), 7u);
  EXPECT_FLOAT_EQ(f->get_float("llama.rope.freq_base"), 10000.f);
  EXPECT_TRUE(f->get_bool("flag"));
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(f->get_float_array("scores"), (std::vector<float>{0.5f, -1.f}));
  EXPECT_EQ(f->get_int_array("types"), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_FALSE(f->find_uint("missing").has_value());
  ASSERT_EQ(f->tensors().size(), 2u);
  const GgufTensor& t = f->tensor("t.weight");
  EXPECT_EQ(t.dims, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(t.bytes, 32u);
  EXPECT_EQ(t.offset % 32, 0u);
  auto data = f->tensor_data(t);
  for (size_t i = 0; i < data.size(); ++i) EXPECT_EQ(data[i], i);
  EXPECT_EQ(f->tensor("q.weight").bytes, 34u);
  EXPECT_EQ(f->tensor_data(f->tensor("q.weight"))[5], 7);
}

TEST(Gguf, TypedGettersRejectWrongTypesAndMissingKeys) {
  auto f = GgufFile::open(write_bytes("ok.gguf", small_file()));
  EXPECT_THROW(f->get_uint("general.architecture"), Error);
  EXPECT_THROW(f->get_string("llama.block_count"), Error);
  EXPECT_THROW(f->get_string("no.such.key"), Error);
  EXPECT_THROW(f->get_string_array("scores"), Error);
  EXPECT_THROW(f->tensor("no.such.tensor"), Error);
}

TEST(Gguf, EveryTruncationIsAClearErrorNeverACrash) {
  const std::vector<uint8_t> bytes = small_file();
  // Everything up to the end of the last tensor's data is needed; only padding follows it.
  uint64_t data_end = 0;
  // Named, not a temporary in the range-for: that would be freed before the loop runs.
  const auto whole = GgufFile::open(write_bytes("whole.gguf", bytes));
  for (const GgufTensor& t : whole->tensors()) {
    data_end = std::max(data_end, t.offset + t.bytes);
  }
  ASSERT_GT(data_end, bytes.size() - 32);
  for (size_t n = 0; n < data_end; ++n) {
    const std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + n);
    const std::string path = write_bytes("truncated.gguf", prefix);
    EXPECT_THROW(GgufFile::open(path), Error) << "prefix of " << n << " bytes";
  }
}

TEST(Gguf, BadMagicAndVersion) {
  std::vector<uint8_t> bytes = small_file();
  bytes[0] = 'X';
  expect_error(bytes, "not a GGUF file");
  bytes = small_file();
  bytes[4] = 9;
  expect_error(bytes, "version 9");
}

TEST(Gguf, UnknownTensorType) {
  std::vector<uint8_t> bytes = small_file();
  // The tensor table entry: name, n_dims (u32), dims (u64 each), type (u32), offset (u64).
  const size_t type_at = find(bytes, "t.weight") + 8 + 4 + 16;
  uint32_t type = 99;
  std::memcpy(&bytes[type_at], &type, 4);
  expect_error(bytes, "unknown type number 99");
}

TEST(Gguf, TensorPastEndOfFile) {
  std::vector<uint8_t> bytes = small_file();
  const size_t offset_at = find(bytes, "t.weight") + 8 + 4 + 16 + 4;
  uint64_t offset = 1 << 20;
  std::memcpy(&bytes[offset_at], &offset, 8);
  expect_error(bytes, "past the end of the file");
}

TEST(Gguf, OverflowingDimensions) {
  std::vector<uint8_t> bytes = small_file();
  const size_t dims_at = find(bytes, "t.weight") + 8 + 4;
  uint64_t huge = uint64_t{1} << 62;
  std::memcpy(&bytes[dims_at], &huge, 8);
  std::memcpy(&bytes[dims_at + 8], &huge, 8);
  expect_error(bytes, "invalid or overflowing shape");
}

TEST(Gguf, AbsurdStringAndArrayLengths) {
  std::vector<uint8_t> bytes = small_file();
  // The u64 length just before the key "general.architecture".
  const size_t key_len_at = find(bytes, "general.architecture") - 8;
  uint64_t absurd = uint64_t{1} << 40;
  std::memcpy(&bytes[key_len_at], &absurd, 8);
  expect_error(bytes, "string of");

  bytes = small_file();
  // Array header after the key "tokenizer.ggml.tokens": value type, element type, count.
  const size_t count_at = find(bytes, "tokenizer.ggml.tokens") + 21 + 4 + 4;
  std::memcpy(&bytes[count_at], &absurd, 8);
  expect_error(bytes, "array claims");
}

TEST(Gguf, MissingFileNamesThePath) {
  try {
    GgufFile::open("/no/such/dir/model.gguf");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/no/such/dir/model.gguf"), std::string::npos);
  }
}

TEST(Gguf, ReadsTheRealModels) {
  const std::string dir = std::string(FLASHLM_SOURCE_DIR) + "/models/";
  int found = 0;
  for (const char* name : {"SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf",
                           "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"}) {
    if (!std::ifstream(dir + name)) continue;
    auto f = GgufFile::open(dir + name);
    EXPECT_GT(f->tensors().size(), 100u) << name;
    uint64_t end = 0;
    for (const auto& t : f->tensors()) end = std::max(end, t.offset + t.bytes);
    EXPECT_LE(end, f->file_size()) << name;
    ++found;
  }
  if (found == 0) GTEST_SKIP() << "no real model in models/; run scripts/fetch_models.py --all";
}

}  // namespace
}  // namespace flashlm
