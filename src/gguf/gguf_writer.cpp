#include "gguf/gguf_writer.h"

#include <cstring>
#include <fstream>

#include "common/error.h"

namespace flashlm {

namespace gguf_bytes {

void put_bytes(std::vector<uint8_t>& out, const void* data, size_t size) {
  const size_t at = out.size();
  out.resize(at + size);
  if (size > 0) std::memcpy(out.data() + at, data, size);
}

void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  put_bytes(out, s.data(), s.size());
}

}  // namespace gguf_bytes

namespace {

using gguf_bytes::put;
using gguf_bytes::put_bytes;
using gguf_bytes::put_string;

void put_value(std::vector<uint8_t>& out, const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::UINT8: put<uint8_t>(out, static_cast<uint8_t>(std::get<uint64_t>(v.scalar))); break;
    case GgufValueType::INT8: put<int8_t>(out, static_cast<int8_t>(std::get<int64_t>(v.scalar))); break;
    case GgufValueType::UINT16: put<uint16_t>(out, static_cast<uint16_t>(std::get<uint64_t>(v.scalar))); break;
    case GgufValueType::INT16: put<int16_t>(out, static_cast<int16_t>(std::get<int64_t>(v.scalar))); break;
    case GgufValueType::UINT32: put<uint32_t>(out, static_cast<uint32_t>(std::get<uint64_t>(v.scalar))); break;
    case GgufValueType::INT32: put<int32_t>(out, static_cast<int32_t>(std::get<int64_t>(v.scalar))); break;
    case GgufValueType::UINT64: put<uint64_t>(out, std::get<uint64_t>(v.scalar)); break;
    case GgufValueType::INT64: put<int64_t>(out, std::get<int64_t>(v.scalar)); break;
    case GgufValueType::FLOAT32: put<float>(out, static_cast<float>(std::get<double>(v.scalar))); break;
    case GgufValueType::FLOAT64: put<double>(out, std::get<double>(v.scalar)); break;
    case GgufValueType::BOOL: put<uint8_t>(out, std::get<bool>(v.scalar) ? 1 : 0); break;
    case GgufValueType::STRING: put_string(out, std::get<std::string>(v.scalar)); break;
    case GgufValueType::ARRAY:
      put<uint32_t>(out, static_cast<uint32_t>(v.element_type));
      put<uint64_t>(out, v.array_size());
      for (const std::string& s : v.strings) put_string(out, s);
      for (const GgufValue& e : v.array) put_value(out, e);
      break;
  }
}

}  // namespace

void GgufWriter::key(const std::string& k, GgufValueType type) {
  put_string(kv_, k);
  put<uint32_t>(kv_, static_cast<uint32_t>(type));
  ++n_kv_;
}

void GgufWriter::add_string(const std::string& k, const std::string& value) {
  key(k, GgufValueType::STRING);
  put_string(kv_, value);
}

void GgufWriter::add_uint32(const std::string& k, uint32_t value) {
  key(k, GgufValueType::UINT32);
  put(kv_, value);
}

void GgufWriter::add_uint64(const std::string& k, uint64_t value) {
  key(k, GgufValueType::UINT64);
  put(kv_, value);
}

void GgufWriter::add_int32(const std::string& k, int32_t value) {
  key(k, GgufValueType::INT32);
  put(kv_, value);
}

void GgufWriter::add_float32(const std::string& k, float value) {
  key(k, GgufValueType::FLOAT32);
  put(kv_, value);
}

void GgufWriter::add_bool(const std::string& k, bool value) {
  key(k, GgufValueType::BOOL);
  put<uint8_t>(kv_, value ? 1 : 0);
}

void GgufWriter::add_string_array(const std::string& k, const std::vector<std::string>& values) {
  key(k, GgufValueType::ARRAY);
  put<uint32_t>(kv_, static_cast<uint32_t>(GgufValueType::STRING));
  put<uint64_t>(kv_, values.size());
  for (const auto& v : values) put_string(kv_, v);
}

void GgufWriter::add_int32_array(const std::string& k, const std::vector<int32_t>& values) {
  key(k, GgufValueType::ARRAY);
  put<uint32_t>(kv_, static_cast<uint32_t>(GgufValueType::INT32));
  put<uint64_t>(kv_, values.size());
  for (int32_t v : values) put(kv_, v);
}

void GgufWriter::add_float32_array(const std::string& k, const std::vector<float>& values) {
  key(k, GgufValueType::ARRAY);
  put<uint32_t>(kv_, static_cast<uint32_t>(GgufValueType::FLOAT32));
  put<uint64_t>(kv_, values.size());
  for (float v : values) put(kv_, v);
}

void GgufWriter::add_uint64_array(const std::string& k, const std::vector<uint64_t>& values) {
  key(k, GgufValueType::ARRAY);
  put<uint32_t>(kv_, static_cast<uint32_t>(GgufValueType::UINT64));
  put<uint64_t>(kv_, values.size());
  for (uint64_t v : values) put(kv_, v);
}

void GgufWriter::add_tensor(const std::string& name, TensorType type,
                            const std::vector<int64_t>& dims, std::vector<uint8_t> data) {
  add_tensor_view(name, type, dims, data);
  tensors_.back().owned = std::move(data);
  tensors_.back().data = tensors_.back().owned;
}

void GgufWriter::add_tensor_view(const std::string& name, TensorType type,
                                 const std::vector<int64_t>& dims, std::span<const uint8_t> data) {
  int64_t rows = 1;
  for (size_t i = 1; i < dims.size(); ++i) rows *= dims[i];
  const size_t expected = row_bytes(type, dims.at(0)) * static_cast<size_t>(rows);
  if (data.size() != expected) {
    fail("tensor '{}': {} bytes given, its shape and type need {}", name, data.size(), expected);
  }
  tensors_.push_back({name, type, dims, {}, data});
}

namespace {
uint64_t align_up(uint64_t x, uint64_t alignment) { return (x + alignment - 1) / alignment * alignment; }
}  // namespace

std::vector<uint8_t> GgufWriter::header(uint32_t alignment) const {
  std::vector<uint8_t> out;
  put<uint32_t>(out, 0x46554747);
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, n_kv_ + (alignment != 32 ? 1 : 0));
  put_bytes(out, kv_.data(), kv_.size());
  if (alignment != 32) {
    put_string(out, "general.alignment");
    put<uint32_t>(out, static_cast<uint32_t>(GgufValueType::UINT32));
    put<uint32_t>(out, alignment);
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) put<uint64_t>(out, static_cast<uint64_t>(d));
    put<uint32_t>(out, static_cast<uint32_t>(t.type));
    put<uint64_t>(out, offset);
    offset = align_up(offset + t.data.size(), alignment);
  }
  out.resize(align_up(out.size(), alignment), 0);
  return out;
}

uint64_t GgufWriter::file_size(uint32_t alignment) const {
  uint64_t size = header(alignment).size();
  for (const Tensor& t : tensors_) size = align_up(size + t.data.size(), alignment);
  return size;
}

std::vector<uint8_t> GgufWriter::serialize(uint32_t alignment) const {
  std::vector<uint8_t> out = header(alignment);
  for (const Tensor& t : tensors_) {
    put_bytes(out, t.data.data(), t.data.size());
    out.resize(align_up(out.size(), alignment), 0);
  }
  return out;
}

void GgufWriter::write(const std::function<void(const void*, size_t)>& sink,
                       uint32_t alignment) const {
  const std::vector<uint8_t> head = header(alignment);
  sink(head.data(), head.size());
  const std::vector<uint8_t> zeros(alignment, 0);
  for (const Tensor& t : tensors_) {
    sink(t.data.data(), t.data.size());
    sink(zeros.data(), align_up(t.data.size(), alignment) - t.data.size());
  }
}

void GgufWriter::add_value(const std::string& k, const GgufValue& value) {
  key(k, value.type);
  put_value(kv_, value);
}

void GgufWriter::write(const std::string& path, uint32_t alignment) const {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  write([&](const void* data, size_t size) {
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  }, alignment);
  if (!f) fail("cannot write '{}'", path);
}

}  // namespace flashlm
