#include "gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "common/mapped_files.h"

namespace flashlm {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian

// All arrays of a file together (a GgufLimits entry in spirit). An element takes one byte on
// disk but a GgufValue (~100 bytes) in memory, so this, not the file size, bounds what metadata
// can cost: 8M elements stay under 1 GiB, and a 262k vocabulary with scores and types (Gemma 3)
// needs under 1M.
constexpr uint64_t kMaxArrayElementsInFile = 1ull << 23;

// Bounds-checked little-endian cursor over the mapped file.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, uint64_t size)
      : path_(path), data_(data), size_(size) {}

  uint64_t position() const { return pos_; }

  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string read_string(const char* what) {
    const uint64_t length = read<uint64_t>(what);
    if (length > GgufLimits::kMaxStringBytes) {
      fail("{}: corrupt GGUF file: {} claims a string of {} bytes at offset {} (limit {})", path_,
           what, length, pos_ - 8, GgufLimits::kMaxStringBytes);
    }
    need(length, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length;
    return s;
  }

  void need(uint64_t bytes, const char* what) const {
    if (bytes > size_ - pos_) {
      fail("{}: truncated or corrupt GGUF file: {} needs {} bytes at offset {}, but the file has "
           "{} bytes; re-download or re-convert the model",
           path_, what, bytes, pos_, size_);
    }
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

GgufValue read_value(Cursor& in, GgufValueType type, const std::string& path, uint32_t depth,
                     uint64_t& elements_left);

GgufValue read_array(Cursor& in, const std::string& path, uint32_t depth,
                     uint64_t& elements_left) {
  if (depth >= GgufLimits::kMaxArrayDepth) {
    fail("{}: corrupt GGUF file: arrays nested deeper than {}", path, GgufLimits::kMaxArrayDepth);
  }
  GgufValue value;
  value.type = GgufValueType::ARRAY;
  const uint32_t element_type = in.read<uint32_t>("array element type");
  if (element_type > static_cast<uint32_t>(GgufValueType::FLOAT64)) {
    fail("{}: corrupt GGUF file: unknown array element type {} at offset {}", path, element_type,
         in.position() - 4);
  }
  value.element_type = static_cast<GgufValueType>(element_type);
  const uint64_t count = in.read<uint64_t>("array length");
  if (count > GgufLimits::kMaxArrayElements) {
    fail("{}: corrupt GGUF file: an array claims {} elements (limit {})", path, count,
         GgufLimits::kMaxArrayElements);
  }
  if (count > elements_left) {
    fail("{}: corrupt GGUF file: its arrays hold more than {} elements in all (this one {})", path,
         kMaxArrayElementsInFile, count);
  }
  elements_left -= count;
  // Every element takes at least one byte, so a count beyond the bytes left is corrupt; this
  // check happens before any allocation sized by `count`.
  in.need(count, "array elements");
  if (value.element_type == GgufValueType::STRING) {
    value.strings.reserve(count);
    for (uint64_t i = 0; i < count; ++i) value.strings.push_back(in.read_string("array string"));
  } else {
    value.array.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
      value.array.push_back(read_value(in, value.element_type, path, depth + 1, elements_left));
    }
  }
  return value;
}

GgufValue read_value(Cursor& in, GgufValueType type, const std::string& path, uint32_t depth,
                     uint64_t& elements_left) {
  GgufValue value;
  value.type = type;
  switch (type) {
    case GgufValueType::UINT8: value.scalar = uint64_t{in.read<uint8_t>("u8 value")}; break;
    case GgufValueType::INT8: value.scalar = int64_t{in.read<int8_t>("i8 value")}; break;
    case GgufValueType::UINT16: value.scalar = uint64_t{in.read<uint16_t>("u16 value")}; break;
    case GgufValueType::INT16: value.scalar = int64_t{in.read<int16_t>("i16 value")}; break;
    case GgufValueType::UINT32: value.scalar = uint64_t{in.read<uint32_t>("u32 value")}; break;
    case GgufValueType::INT32: value.scalar = int64_t{in.read<int32_t>("i32 value")}; break;
    case GgufValueType::UINT64: value.scalar = in.read<uint64_t>("u64 value"); break;
    case GgufValueType::INT64: value.scalar = in.read<int64_t>("i64 value"); break;
    case GgufValueType::FLOAT32: value.scalar = double{in.read<float>("f32 value")}; break;
    case GgufValueType::FLOAT64: value.scalar = in.read<double>("f64 value"); break;
    case GgufValueType::BOOL: value.scalar = in.read<uint8_t>("bool value") != 0; break;
    case GgufValueType::STRING: value.scalar = in.read_string("string value"); break;
    case GgufValueType::ARRAY: return read_array(in, path, depth, elements_left);
    default:
      fail("{}: corrupt GGUF file: unknown metadata value type {} at offset {}", path,
           static_cast<uint32_t>(type), in.position());
  }
  return value;
}

bool is_integer(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
    case GgufValueType::INT8:
    case GgufValueType::UINT16:
    case GgufValueType::INT16:
    case GgufValueType::UINT32:
    case GgufValueType::INT32:
    case GgufValueType::UINT64:
    case GgufValueType::INT64:
      return true;
    default:
      return false;
  }
}

int64_t as_int(const GgufValue& v) {
  if (const auto* u = std::get_if<uint64_t>(&v.scalar)) return static_cast<int64_t>(*u);
  return std::get<int64_t>(v.scalar);
}

}  // namespace

const char* gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::UINT8: return "u8";
    case GgufValueType::INT8: return "i8";
    case GgufValueType::UINT16: return "u16";
    case GgufValueType::INT16: return "i16";
    case GgufValueType::UINT32: return "u32";
    case GgufValueType::INT32: return "i32";
    case GgufValueType::FLOAT32: return "f32";
    case GgufValueType::BOOL: return "bool";
    case GgufValueType::STRING: return "string";
    case GgufValueType::ARRAY: return "array";
    case GgufValueType::UINT64: return "u64";
    case GgufValueType::INT64: return "i64";
    case GgufValueType::FLOAT64: return "f64";
  }
  return "unknown";
}

std::string GgufValue::to_string(size_t max_items) const {
  if (is_array()) {
    std::string out = fmt::format("[{} x {}]", array_size(), gguf_value_type_name(element_type));
    const size_t n = std::min(max_items, array_size());
    out += " {";
    for (size_t i = 0; i < n; ++i) {
      if (i) out += ", ";
      out += element_type == GgufValueType::STRING ? fmt::format("\"{}\"", strings[i])
                                                   : array[i].to_string(max_items);
    }
    if (n < array_size()) out += ", ...";
    return out + "}";
  }
  return std::visit(
      [](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return x.size() > 120 ? fmt::format("\"{}...\" ({} bytes)", x.substr(0, 120), x.size())
                                : fmt::format("\"{}\"", x);
        } else {
          return fmt::format("{}", x);
        }
      },
      scalar);
}

int64_t GgufTensor::elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::string GgufTensor::shape_string() const {
  std::string out;
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? " x " : "") + std::to_string(dims[i]);
  return out;
}

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (file->fd_ < 0) {
    fail("cannot open model file '{}': {}; check the path (scripts/fetch_models.py fetches the "
         "test models into models/)",
         path, std::strerror(errno));
  }
  struct stat st {};
  if (fstat(file->fd_, &st) != 0) fail("cannot stat '{}': {}", path, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("'{}' is not a regular file; pass a .gguf model file", path);
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ < 24) {
    fail("{}: not a GGUF file: only {} bytes long (a GGUF header alone takes 24)", path,
         file->size_);
  }
  void* map = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, file->fd_, 0);
  if (map == MAP_FAILED) fail("cannot memory-map '{}': {}", path, std::strerror(errno));
  file->map_ = static_cast<const uint8_t*>(map);
  register_mapped_file(map, file->size_, path);
  file->parse();
  return file;
}

void GgufFile::prefetch(std::span<const uint8_t> bytes) const {
  if (bytes.empty()) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(bytes.data()) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(bytes.data() + bytes.size());
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);
}

void GgufFile::read_only_what_is_touched() const {
  madvise(const_cast<uint8_t*>(map_), size_, MADV_RANDOM);
}

void GgufFile::release(std::span<const uint8_t> bytes) const {
  // Only the pages wholly inside: a page shared with a neighbouring tensor stays.
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(bytes.data()) + page - 1) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(bytes.data() + bytes.size()) & ~(page - 1);
  if (end <= begin) return;
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  const off_t offset = static_cast<off_t>(begin - reinterpret_cast<uintptr_t>(map_));
  posix_fadvise(fd_, offset, static_cast<off_t>(end - begin), POSIX_FADV_DONTNEED);
}

GgufFile::~GgufFile() {
  if (map_) {
    unregister_mapped_file(map_);
    munmap(const_cast<uint8_t*>(map_), size_);
  }
  if (fd_ >= 0) {
    if (drop_page_cache_) posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED);  // best effort
    close(fd_);
  }
}

void GgufFile::parse() {
  Cursor in(path_, map_, size_);
  const uint32_t magic = in.read<uint32_t>("magic");
  if (magic != kGgufMagic) {
    fail("{}: not a GGUF file (bad magic 0x{:08x}); flashlm reads GGUF models (.gguf) and its own "
         ".flm files",
         path_, magic);
  }
  version_ = in.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    fail("{}: GGUF version {} is not supported (flashlm reads versions 2 and 3)", path_, version_);
  }
  const uint64_t n_tensors = in.read<uint64_t>("tensor count");
  const uint64_t n_metadata = in.read<uint64_t>("metadata count");
  if (n_tensors > GgufLimits::kMaxTensors || n_metadata > GgufLimits::kMaxMetadataEntries) {
    fail("{}: corrupt GGUF header: {} tensors and {} metadata entries (limits {} and {})", path_,
         n_tensors, n_metadata, GgufLimits::kMaxTensors, GgufLimits::kMaxMetadataEntries);
  }

  metadata_.reserve(n_metadata);
  uint64_t array_elements_left = kMaxArrayElementsInFile;
  for (uint64_t i = 0; i < n_metadata; ++i) {
    std::string key = in.read_string("metadata key");
    const uint32_t type = in.read<uint32_t>("metadata value type");
    if (type > static_cast<uint32_t>(GgufValueType::FLOAT64)) {
      fail("{}: corrupt GGUF file: metadata '{}' has unknown value type {}", path_, key, type);
    }
    GgufValue value =
        read_value(in, static_cast<GgufValueType>(type), path_, 0, array_elements_left);
    if (!metadata_index_.emplace(key, metadata_.size()).second) {
      fail("{}: corrupt GGUF file: metadata key '{}' appears twice", path_, key);
    }
    metadata_.emplace_back(std::move(key), std::move(value));
  }
  if (const GgufValue* a = find("general.alignment")) {
    if (!is_integer(a->type) || as_int(*a) <= 0 || (as_int(*a) & (as_int(*a) - 1)) != 0) {
      fail("{}: general.alignment must be a positive power of two, got {}", path_, a->to_string());
    }
    alignment_ = static_cast<uint64_t>(as_int(*a));
  }

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = in.read_string("tensor name");
    const uint32_t n_dims = in.read<uint32_t>("tensor dimension count");
    if (n_dims == 0 || n_dims > GgufLimits::kMaxDims) {
      fail("{}: corrupt GGUF file: tensor '{}' has {} dimensions (1 to {} allowed)", path_, t.name,
           n_dims, GgufLimits::kMaxDims);
    }
    int64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = in.read<uint64_t>("tensor dimension");
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(elements, static_cast<int64_t>(dim), &elements)) {
        fail("{}: corrupt GGUF file: tensor '{}' has an invalid or overflowing shape", path_,
             t.name);
      }
      t.dims.push_back(static_cast<int64_t>(dim));
    }
    const uint32_t type = in.read<uint32_t>("tensor type");
    const TypeTraits& traits = type_traits(type);
    if (!traits.name) {
      fail("{}: tensor '{}' has unknown type number {}; the file may be corrupt or written by a "
           "newer tool",
           path_, t.name, type);
    }
    t.type = static_cast<TensorType>(type);
    if (t.dims[0] % traits.block_size != 0) {
      fail("{}: tensor '{}' rows of {} elements are not a whole number of {} blocks", path_,
           t.name, t.dims[0], traits.name);
    }
    // A shape can fit int64 elements yet overflow in bytes (F32: 4 per element); wrapped, the
    // size would pass the bounds check below while views read far past the mapping.
    if (__builtin_mul_overflow(static_cast<uint64_t>(elements / traits.block_size),
                               uint64_t{traits.block_bytes}, &t.bytes)) {
      fail("{}: corrupt GGUF file: tensor '{}' of shape {} has more bytes than a file can hold",
           path_, t.name, t.shape_string());
    }
    t.offset = in.read<uint64_t>("tensor offset");  // relative for now
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) {
      fail("{}: corrupt GGUF file: tensor '{}' appears twice", path_, t.name);
    }
    tensors_.push_back(std::move(t));
  }

  data_offset_ = (in.position() + alignment_ - 1) / alignment_ * alignment_;
  for (GgufTensor& t : tensors_) {
    if (t.offset % alignment_ != 0) {
      fail("{}: corrupt GGUF file: tensor '{}' data offset {} is not aligned to {}", path_, t.name,
           t.offset, alignment_);
    }
    if (t.offset > size_ || data_offset_ > size_ - t.offset ||
        t.bytes > size_ - data_offset_ - t.offset) {
      fail("{}: truncated GGUF file: tensor '{}' ({} bytes at data offset {}) ends past the end of "
           "the file ({} bytes); re-download the model",
           path_, t.name, t.bytes, t.offset, size_);
    }
    t.offset += data_offset_;
  }
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = metadata_index_.find(std::string(key));
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

namespace {
[[noreturn]] void missing(const std::string& path, std::string_view key, const char* expected) {
  fail("{}: metadata '{}' ({}) is missing; the model file is incomplete or of an unsupported kind",
       path, key, expected);
}
[[noreturn]] void wrong_type(const std::string& path, std::string_view key, const GgufValue& v,
                             const char* expected) {
  fail("{}: metadata '{}' has type {}, expected {}", path, key, gguf_value_type_name(v.type),
       expected);
}
}  // namespace

std::string GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) missing(path_, key, "string");
  if (v->type != GgufValueType::STRING) wrong_type(path_, key, *v, "string");
  return std::get<std::string>(v->scalar);
}

std::optional<std::string> GgufFile::find_string(std::string_view key) const {
  if (!has(key)) return std::nullopt;
  return get_string(key);
}

int64_t GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) missing(path_, key, "integer");
  if (!is_integer(v->type)) wrong_type(path_, key, *v, "an integer");
  return as_int(*v);
}

uint64_t GgufFile::get_uint(std::string_view key) const {
  const int64_t value = get_int(key);
  if (value < 0) fail("{}: metadata '{}' is negative ({})", path_, key, value);
  return static_cast<uint64_t>(value);
}

std::optional<uint64_t> GgufFile::find_uint(std::string_view key) const {
  if (!has(key)) return std::nullopt;
  return get_uint(key);
}

double GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) missing(path_, key, "float");
  if (v->type == GgufValueType::FLOAT32 || v->type == GgufValueType::FLOAT64) {
    return std::get<double>(v->scalar);
  }
  if (is_integer(v->type)) return static_cast<double>(as_int(*v));
  wrong_type(path_, key, *v, "a float");
}

std::optional<double> GgufFile::find_float(std::string_view key) const {
  if (!has(key)) return std::nullopt;
  return get_float(key);
}

bool GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) missing(path_, key, "bool");
  if (v->type != GgufValueType::BOOL) wrong_type(path_, key, *v, "bool");
  return std::get<bool>(v->scalar);
}

const std::vector<std::string>& GgufFile::get_string_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) missing(path_, key, "array of strings");
  if (!v->is_array() || v->element_type != GgufValueType::STRING) {
    wrong_type(path_, key, *v, "an array of strings");
  }
  return v->strings;
}

std::vector<float> GgufFile::get_float_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) missing(path_, key, "array of floats");
  if (!v->is_array() ||
      (v->element_type != GgufValueType::FLOAT32 && v->element_type != GgufValueType::FLOAT64)) {
    wrong_type(path_, key, *v, "an array of floats");
  }
  std::vector<float> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) out.push_back(static_cast<float>(std::get<double>(e.scalar)));
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) missing(path_, key, "array of integers");
  if (!v->is_array() || !is_integer(v->element_type)) {
    wrong_type(path_, key, *v, "an array of integers");
  }
  std::vector<int64_t> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) out.push_back(as_int(e));
  return out;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::tensor(std::string_view name) const {
  const GgufTensor* t = find_tensor(name);
  if (!t) {
    fail("{}: tensor '{}' is missing; the model file is incomplete or of an unsupported "
         "architecture",
         path_, name);
  }
  return *t;
}

std::span<const uint8_t> GgufFile::tensor_data(const GgufTensor& tensor) const {
  return {map_ + tensor.offset, tensor.bytes};
}

}  // namespace flashlm
