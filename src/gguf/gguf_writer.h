// Writes GGUF files (version 3). Used by the tests to make small models with known contents
// and by tools that emit GGUF.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace flashlm {

// The GGUF encoding of raw values, appended to a byte buffer (little-endian, as this machine
// stores them): what GgufWriter is made of, and what tests use to build files it would refuse
// to write.
namespace gguf_bytes {
void put_bytes(std::vector<uint8_t>& out, const void* data, size_t size);
template <typename T>
void put(std::vector<uint8_t>& out, T value) {
  put_bytes(out, &value, sizeof(T));
}
// A GGUF string: uint64 length, then the bytes.
void put_string(std::vector<uint8_t>& out, const std::string& s);
}  // namespace gguf_bytes

class GgufWriter {
 public:
  void add_string(const std::string& key, const std::string& value);
  void add_uint32(const std::string& key, uint32_t value);
  void add_uint64(const std::string& key, uint64_t value);
  void add_int32(const std::string& key, int32_t value);
  void add_float32(const std::string& key, float value);
  void add_bool(const std::string& key, bool value);
  void add_string_array(const std::string& key, const std::vector<std::string>& values);
  void add_int32_array(const std::string& key, const std::vector<int32_t>& values);
  void add_float32_array(const std::string& key, const std::vector<float>& values);
  void add_uint64_array(const std::string& key, const std::vector<uint64_t>& values);
  // dims[0] is the row length; `data` must hold exactly the tensor's bytes.
  void add_tensor(const std::string& name, TensorType type, const std::vector<int64_t>& dims,
                  std::vector<uint8_t> data);
  // As add_tensor, without a copy: `data` must stay valid until the file is written.
  void add_tensor_view(const std::string& name, TensorType type, const std::vector<int64_t>& dims,
                       std::span<const uint8_t> data);

  // Bytes the whole file will take (header, tensor table, aligned data).
  uint64_t file_size(uint32_t alignment = 32) const;
  std::vector<uint8_t> serialize(uint32_t alignment = 32) const;
  void write(const std::string& path, uint32_t alignment = 32) const;
  // Streams the file's bytes, in order, to `sink`.
  void write(const std::function<void(const void*, size_t)>& sink, uint32_t alignment = 32) const;
  // Appends a metadata entry of any type, as read from another file.
  void add_value(const std::string& key, const GgufValue& value);

 private:
  struct Tensor {
    std::string name;
    TensorType type;
    std::vector<int64_t> dims;
    std::vector<uint8_t> owned;
    std::span<const uint8_t> data;
  };
  void key(const std::string& k, GgufValueType type);
  std::vector<uint8_t> header(uint32_t alignment) const;
  std::vector<uint8_t> kv_;
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

}  // namespace flashlm
