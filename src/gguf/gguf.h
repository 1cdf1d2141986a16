// Reader for GGUF model files (versions 2 and 3).
//
// The file is memory-mapped read-only. Everything is validated against the file size before
// use: a truncated or corrupt file yields a flashlm::Error naming the file and the problem,
// never an out-of-bounds read. Tensor dimensions follow ggml: dims[0] is the row length
// (the contiguous axis), dims[1] the number of rows.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "quant/types.h"

namespace flashlm {

enum class GgufValueType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};

const char* gguf_value_type_name(GgufValueType type);

// A metadata value. Integers of every width are widened to int64/uint64, floats to double;
// `type` keeps the type written in the file. Arrays keep their element type and values.
struct GgufValue {
  GgufValueType type = GgufValueType::UINT8;
  GgufValueType element_type = GgufValueType::UINT8;  // for arrays
  std::variant<uint64_t, int64_t, double, bool, std::string> scalar;
  std::vector<GgufValue> array;  // elements of an array of non-strings or nested arrays
  std::vector<std::string> strings;  // elements of an array of strings (kept apart: vocabularies)

  bool is_array() const { return type == GgufValueType::ARRAY; }
  size_t array_size() const { return element_type == GgufValueType::STRING ? strings.size() : array.size(); }
  // A short human-readable rendering (arrays abbreviated), for `flashlm info`.
  std::string to_string(size_t max_items = 8) const;
};

struct GgufTensor {
  std::string name;
  TensorType type = TensorType::F32;
  std::vector<int64_t> dims;  // dims[0] = row length
  uint64_t offset = 0;        // absolute byte offset of the data in the file
  uint64_t bytes = 0;         // size of the data in bytes
  int64_t elements() const;
  int64_t rows() const { return dims.empty() ? 0 : elements() / dims[0]; }
  std::string shape_string() const;
};

class GgufFile {
 public:
  // Opens and validates `path`. Throws flashlm::Error on any problem.
  static std::unique_ptr<GgufFile> open(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t file_size() const { return size_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }

  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }

  // Typed getters: throw flashlm::Error when the key is missing or has another type
  // (any integer width is accepted for the integer getters, any float width for get_float).
  std::string get_string(std::string_view key) const;
  uint64_t get_uint(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  double get_float(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  std::optional<uint64_t> find_uint(std::string_view key) const;
  std::optional<double> find_float(std::string_view key) const;
  std::optional<std::string> find_string(std::string_view key) const;
  const std::vector<std::string>& get_string_array(std::string_view key) const;
  std::vector<float> get_float_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(std::string_view name) const;
  const GgufTensor& tensor(std::string_view name) const;  // throws when missing
  // The tensor's bytes inside the mapping (valid while this GgufFile lives).
  std::span<const uint8_t> tensor_data(const GgufTensor& tensor) const;
  // A file read once and copied (thresholds, predictors): on close, its pages leave the page
  // cache too, so they do not stay charged to a memory budget the plan does not count them in.
  void drop_page_cache_on_close() { drop_page_cache_ = true; }
  // Paging of the mapping, for a reader that goes through the weights a part at a time and
  // means to hold only that part (training with the base weights left on flash): prefetch()
  // starts reading `bytes` (a span inside the mapping) in the background; release() drops the
  // whole pages inside it from this process and from the page cache, so that they are read
  // from the file again when next touched. Both are hints: a failure costs only time.
  void prefetch(std::span<const uint8_t> bytes) const;
  void release(std::span<const uint8_t> bytes) const;
  // For such a reader: a page fault reads that page alone, not the kernel's readahead window
  // around it, which would bring back the neighbours of what was just released (prefetch()
  // does the reading ahead, of exactly what comes next).
  void read_only_what_is_touched() const;

 private:
  GgufFile() = default;
  void parse();

  std::string path_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
  bool drop_page_cache_ = false;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::unordered_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensor> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

// Limits on what a file can make the reader allocate, checked before allocating.
struct GgufLimits {
  static constexpr uint64_t kMaxStringBytes = 1ull << 24;      // 16 MiB per string
  static constexpr uint64_t kMaxArrayElements = 1ull << 24;    // 16M elements per array
  static constexpr uint64_t kMaxMetadataEntries = 1ull << 16;
  static constexpr uint64_t kMaxTensors = 1ull << 20;
  static constexpr uint32_t kMaxDims = 4;
  static constexpr uint32_t kMaxArrayDepth = 4;
};

}  // namespace flashlm
