// Numbers in a file or a request that would make the engine allocate without bound are refused
// before anything is allocated, with an error that names the number.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "common/error.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "model/config.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

using gguf_bytes::put;
using gguf_bytes::put_bytes;
using gguf_bytes::put_string;
using testing::temp_path;

std::string write_bytes(const std::string& name, const std::vector<uint8_t>& bytes) {
  const std::string path = temp_path(name);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

std::vector<uint8_t> gguf_header(uint64_t n_tensors, uint64_t n_metadata) {
  std::vector<uint8_t> out;
  put_bytes(out, "GGUF", 4);
  put<uint32_t>(out, 3);
  put<uint64_t>(out, n_tensors);
  put<uint64_t>(out, n_metadata);
  return out;
}

void expect_error_containing(const std::function<void()>& action, const std::string& needle) {
  try {
    action();
    FAIL() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Limits, TensorWhoseByteSizeOverflowsIsRefused) {
  // 2^62 F32 elements fit int64, but 2^64 bytes wrap to 0 and would pass the size check.
  std::vector<uint8_t> bytes = gguf_header(1, 0);
  put_string(bytes, "huge.weight");
  put<uint32_t>(bytes, 1);
  put<uint64_t>(bytes, uint64_t{1} << 62);
  put<uint32_t>(bytes, static_cast<uint32_t>(TensorType::F32));
  put<uint64_t>(bytes, 0);
  bytes.resize(64, 0);
  const std::string path = write_bytes("overflow.gguf", bytes);
  expect_error_containing([&] { GgufFile::open(path); }, "more bytes than a file can hold");
}

TEST(Limits, ArraysBeyondTheFileTotalAreRefused) {
  // Two u8 arrays of 5M elements each: each is within the per-array limit and the file really
  // holds the bytes, but together they would cost ~1 GiB of GgufValues.
  const uint64_t count = 5'000'000;
  std::vector<uint8_t> bytes = gguf_header(0, 2);
  for (const char* key : {"a", "b"}) {
    put_string(bytes, key);
    put<uint32_t>(bytes, static_cast<uint32_t>(GgufValueType::ARRAY));
    put<uint32_t>(bytes, static_cast<uint32_t>(GgufValueType::UINT8));
    put<uint64_t>(bytes, count);
    bytes.resize(bytes.size() + count, 1);
  }
  const std::string path = write_bytes("arrays.gguf", bytes);
  expect_error_containing([&] { GgufFile::open(path); }, "elements in all");
}

// The tiny test model with one metadata value replaced (or added).
std::string tiny_model_with(const std::string& name, const std::string& key, uint32_t value) {
  const std::string base = temp_path(name + "-base.gguf");
  testing::write_tiny_model(base);
  const auto file = GgufFile::open(base);
  GgufWriter w;
  for (const auto& [k, v] : file->metadata()) {
    if (k != key) w.add_value(k, v);
  }
  w.add_uint32(key, value);
  for (const GgufTensor& t : file->tensors()) {
    w.add_tensor_view(t.name, t.type, t.dims, file->tensor_data(t));
  }
  const std::string path = temp_path(name + ".gguf");
  w.write(path);
  return path;
}

TEST(Limits, ModelShapeOutsideTheSupportedRangeIsRefused) {
  expect_error_containing(
      [&] {
        ModelConfig::from_gguf(*GgufFile::open(tiny_model_with("layers", "llama.block_count",
                                                               1u << 20)));
      },
      "llama.block_count");
  expect_error_containing(
      [&] {
        ModelConfig::from_gguf(
            *GgufFile::open(tiny_model_with("width", "llama.embedding_length", 1u << 30)));
      },
      "llama.embedding_length");
  // 64 is not a multiple of 6 heads: a head width of 10 would silently drop 4 dimensions.
  expect_error_containing(
      [&] {
        ModelConfig::from_gguf(
            *GgufFile::open(tiny_model_with("heads", "llama.attention.head_count", 6)));
      },
      "not a multiple of 6 attention heads");
  // Each number within its own limit, the product (4 heads x 100000) is not.
  expect_error_containing(
      [&] {
        ModelConfig::from_gguf(
            *GgufFile::open(tiny_model_with("head-width", "llama.attention.key_length", 100000)));
      },
      "more than the supported");
  expect_error_containing(
      [&] {
        ModelConfig::from_gguf(
            *GgufFile::open(tiny_model_with("ctx", "llama.context_length", 1u << 30)));
      },
      "llama.context_length");
}

TEST(Limits, TokenIdsOutsideTheVocabularyAreRefused) {
  expect_error_containing(
      [&] {
        Tokenizer::from_gguf(
            *GgufFile::open(tiny_model_with("bos", "tokenizer.ggml.bos_token_id", 100000)));
      },
      "outside the vocabulary");
  const std::string path = temp_path("vocab.gguf");
  testing::write_tiny_model(path);
  const Tokenizer t = Tokenizer::from_gguf(*GgufFile::open(path));
  const int32_t ids[] = {65, t.vocab_size()};
  EXPECT_THROW(t.decode(ids), Error);
}

TEST(Limits, ContextWhoseKvCacheExceedsMemoryIsRefusedWithTheNumbers) {
  const std::string path = temp_path("kv.gguf");
  testing::write_tiny_model(path);
  auto model = Model::load(path);
  // 2 layers x 2^30 tokens x 32 values x 2 x 2 bytes (the default F16 cache) = 256 GiB.
  expect_error_containing(
      [&] { Engine engine(*model, {.threads = 1, .context_size = 1 << 30}); }, "KV cache");
  EXPECT_NO_THROW(Engine(*model, {.threads = 1, .context_size = 128}));
}

}  // namespace
}  // namespace flashlm
