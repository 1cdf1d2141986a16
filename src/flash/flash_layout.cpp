#include "flash/flash_layout.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/checksum.h"
#include "common/error.h"
#include "gguf/gguf_writer.h"
#include "model/config.h"
#include "model/weights.h"
#include "quant/reference.h"

namespace flashlm {
namespace {

size_t pad16(size_t n) { return (n + 15) / 16 * 16; }
uint64_t align_region(uint64_t x) {
  return (x + kFlmRegionAlignment - 1) / kFlmRegionAlignment * kFlmRegionAlignment;
}

bool is_ffn_tensor(const std::string& name) {
  return name.find(".ffn_gate.") != std::string::npos ||
         name.find(".ffn_up.") != std::string::npos ||
         name.find(".ffn_down.") != std::string::npos;
}

// Writes with pwrite, completing short writes; errors (a full disk above all) name the file.
class OutputFile {
 public:
  explicit OutputFile(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create '{}': {}", path_, std::strerror(errno));
  }
  ~OutputFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  void write_at(uint64_t offset, const void* data, size_t size) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (size > 0) {
      const ssize_t n = ::pwrite(fd_, p, size, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        fail("cannot write '{}' at offset {}: {}{}", path_, offset,
             n < 0 ? std::strerror(errno) : "no progress",
             errno == ENOSPC ? "; free some disk space and convert again" : "");
      }
      p += n;
      offset += static_cast<uint64_t>(n);
      size -= static_cast<size_t>(n);
    }
  }
  void sync_and_close() {
    if (::fsync(fd_) != 0) fail("cannot sync '{}': {}", path_, std::strerror(errno));
    if (::close(fd_) != 0) fail("cannot close '{}': {}", path_, std::strerror(errno));
    fd_ = -1;
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// Re-encodes one row of n values of `from` type into `to` type (a copy when they agree).
void recode_row(TensorType from, const uint8_t* src, TensorType to, uint8_t* dst, int64_t n,
                std::vector<float>& scratch) {
  if (from == to) {
    std::memcpy(dst, src, row_bytes(from, n));
    return;
  }
  scratch.resize(n);
  dequantize_row_reference(from, src, scratch.data(), n);
  quantize_row_reference(to, scratch.data(), dst, n);
}

// The bundles of one layer: bundle j holds neuron order[j] (neuron j when order is empty).
std::vector<uint8_t> build_layer_bundles(const LayerWeights& w, const BundleLayout& b, int d_ff,
                                         const std::vector<int32_t>& order) {
  std::vector<uint8_t> out(static_cast<size_t>(d_ff) * b.stride, 0);
  std::vector<float> scratch;
  // The down projection is d_model x d_ff; its column i is gathered from the dequantized rows.
  std::vector<float> down(static_cast<size_t>(b.d_model) * d_ff);
  for (int r = 0; r < b.d_model; ++r) {
    dequantize_row_reference(w.ffn_down.type, w.ffn_down.row(r), down.data() + size_t(r) * d_ff,
                             d_ff);
  }
  std::vector<float> column(b.d_model);
  for (int j = 0; j < d_ff; ++j) {
    const int i = order.empty() ? j : order[j];
    uint8_t* bundle = out.data() + static_cast<size_t>(j) * b.stride;
    if (b.gated) {
      recode_row(w.ffn_gate.type, w.ffn_gate.row(i), b.gate_type, bundle + b.gate_offset(),
                 b.d_model, scratch);
    }
    recode_row(w.ffn_up.type, w.ffn_up.row(i), b.up_type, bundle + b.up_offset(), b.d_model,
               scratch);
    for (int r = 0; r < b.d_model; ++r) column[r] = down[size_t(r) * d_ff + i];
    quantize_row_reference(b.down_type, column.data(), bundle + b.down_offset(), b.d_model);
  }
  return out;
}

void add_manifest(GgufWriter& w, const BundleLayout& b, int d_ff,
                  const std::vector<FlmLayer>& layers, uint64_t source_bytes,
                  const std::string& neuron_order) {
  w.add_uint32("flashlm.format_version", kFlmFormatVersion);
  w.add_uint64("flashlm.source.file_bytes", source_bytes);
  // Absent for the natural order, so such files stay byte for byte what older versions wrote.
  if (!neuron_order.empty()) w.add_string("flashlm.neuron_order", neuron_order);
  w.add_uint32("flashlm.d_ff", static_cast<uint32_t>(d_ff));
  w.add_bool("flashlm.bundle.gated", b.gated);
  w.add_uint32("flashlm.bundle.gate_type", static_cast<uint32_t>(b.gate_type));
  w.add_uint32("flashlm.bundle.up_type", static_cast<uint32_t>(b.up_type));
  w.add_uint32("flashlm.bundle.down_type", static_cast<uint32_t>(b.down_type));
  w.add_uint32("flashlm.bundle.stride", static_cast<uint32_t>(b.stride));
  std::vector<uint64_t> offsets, checksums;
  for (const FlmLayer& l : layers) {
    offsets.push_back(l.offset);
    checksums.push_back(l.checksum);
  }
  w.add_uint64_array("flashlm.layer_offsets", offsets);
  w.add_uint64_array("flashlm.layer_checksums", checksums);
}

}  // namespace

BundleLayout BundleLayout::make(int d_model, bool gated, TensorType gate, TensorType up,
                                TensorType down) {
  BundleLayout b;
  b.d_model = d_model;
  b.gated = gated;
  b.gate_type = gate;
  b.up_type = up;
  b.down_type = down;
  b.gate_bytes = gated ? pad16(row_bytes(gate, d_model)) : 0;
  b.up_bytes = pad16(row_bytes(up, d_model));
  b.down_bytes = pad16(row_bytes(down, d_model));
  b.stride = b.gate_bytes + b.up_bytes + b.down_bytes;
  return b;
}

std::string BundleLayout::describe() const {
  return fmt::format("{} bytes ({}up {}, down {})", stride,
                     gated ? fmt::format("gate {}, ", type_name(gate_type)) : std::string(),
                     type_name(up_type), type_name(down_type));
}

const std::vector<TensorType>& down_column_types() {
  static const std::vector<TensorType> types = {
      TensorType::F16,  TensorType::Q8_0, TensorType::Q6_K, TensorType::Q5_K, TensorType::Q5_1,
      TensorType::Q5_0, TensorType::Q4_K, TensorType::Q4_1, TensorType::Q4_0};
  return types;
}

namespace {

std::string lower_name(TensorType type) {
  std::string name = type_name(type);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

std::string join_names(const std::vector<TensorType>& types) {
  std::string out;
  for (TensorType t : types) out += (out.empty() ? "" : ", ") + lower_name(t);
  return out;
}

}  // namespace

TensorType parse_down_type(const std::string& name) {
  for (TensorType t : down_column_types()) {
    if (lower_name(t) == name) return t;
  }
  fail("unknown down type '{}'; use one of {}", name, join_names(down_column_types()));
}

void check_down_type(TensorType type, int d_model) {
  const uint32_t block = type_traits(type).block_size;
  if (d_model % block == 0) return;
  std::vector<TensorType> fitting;
  for (TensorType t : down_column_types()) {
    if (d_model % type_traits(t).block_size == 0) fitting.push_back(t);
  }
  fail(
      "--down-type {} stores blocks of {} values along d_model, and this model's d_model {} is "
      "not a multiple of {}; for this model use one of {}",
      lower_name(type), block, d_model, block, join_names(fitting));
}

void check_neuron_order(const std::vector<std::vector<int32_t>>& order, int n_layers, int d_ff) {
  if (order.empty()) return;
  if (order.size() != static_cast<size_t>(n_layers)) {
    fail("the neuron order has {} layers; the model has {}", order.size(), n_layers);
  }
  std::vector<char> seen;
  for (int l = 0; l < n_layers; ++l) {
    const std::vector<int32_t>& o = order[l];
    if (o.size() != static_cast<size_t>(d_ff)) {
      fail("the neuron order of layer {} has {} entries; it must be a permutation of the "
           "layer's {} neurons",
           l, o.size(), d_ff);
    }
    seen.assign(d_ff, 0);
    for (int j = 0; j < d_ff; ++j) {
      if (o[j] < 0 || o[j] >= d_ff) {
        fail("the neuron order of layer {} is not a permutation: bundle {} names neuron {}, "
             "outside 0..{}",
             l, j, o[j], d_ff - 1);
      }
      if (seen[o[j]]) {
        fail("the neuron order of layer {} is not a permutation: neuron {} appears twice (again "
             "at bundle {})",
             l, o[j], j);
      }
      seen[o[j]] = 1;
    }
  }
}

BundleType parse_bundle_type(const std::string& name) {
  if (name == "source") return BundleType::Source;
  if (name == "q8_0") return BundleType::Q8_0;
  if (name == "f16") return BundleType::F16;
  fail("unknown bundle type '{}'; use source, q8_0 or f16", name);
}

void convert_to_flm(const std::string& input, const std::string& output,
                    const ConvertOptions& options) {
  namespace fs = std::filesystem;
  if (fs::exists(output) && !options.force) {
    fail("'{}' already exists; pass --force to overwrite it", output);
  }
  auto gguf = GgufFile::open(input);
  if (FlashModelFile::is_flm(*gguf)) fail("'{}' is already a .flm file", input);
  const ModelConfig config = ModelConfig::from_gguf(*gguf);
  const ModelWeights weights = ModelWeights::from_gguf(*gguf, config);
  check_neuron_order(options.neuron_order, config.n_layers, config.d_ff);
  if (!options.neuron_order.empty() && options.neuron_order_name.empty()) {
    fail("a neuron order needs a name to record in the file (ConvertOptions::neuron_order_name)");
  }
  const std::string order_name = options.neuron_order.empty() ? "" : options.neuron_order_name;

  const LayerWeights& first = weights.layers[0];
  TensorType gate = first.ffn_gate.type, up = first.ffn_up.type, down = TensorType::Q8_0;
  if (options.bundle_type != BundleType::Source) {
    gate = up = down = options.bundle_type == BundleType::Q8_0 ? TensorType::Q8_0 : TensorType::F16;
  }
  down = options.down_type.value_or(down);
  check_down_type(down, config.d_model);
  for (const LayerWeights& l : weights.layers) {
    if (options.bundle_type == BundleType::Source &&
        ((config.ffn_gated && l.ffn_gate.type != gate) || l.ffn_up.type != up)) {
      // Layers quantized differently: one layout for all layers needs one type.
      gate = up = TensorType::Q8_0;
    }
  }
  const BundleLayout layout =
      BundleLayout::make(config.d_model, config.ffn_gated, gate, up, down);

  auto make_writer = [&](const std::vector<FlmLayer>& layers) {
    GgufWriter w;
    for (const auto& [key, value] : gguf->metadata()) {
      if (key != "general.alignment") w.add_value(key, value);
    }
    add_manifest(w, layout, config.d_ff, layers, gguf->file_size(), order_name);
    for (const GgufTensor& t : gguf->tensors()) {
      if (!is_ffn_tensor(t.name)) w.add_tensor_view(t.name, t.type, t.dims, gguf->tensor_data(t));
    }
    return w;
  };

  // The manifest has fixed-width values, so placeholders give the final header size.
  std::vector<FlmLayer> layers(config.n_layers);
  const uint64_t resident_bytes = make_writer(layers).file_size(32);
  uint64_t offset = align_region(resident_bytes);
  for (FlmLayer& l : layers) {
    l.offset = offset;
    l.bytes = static_cast<uint64_t>(config.d_ff) * layout.stride;
    offset = align_region(offset + l.bytes);
  }

  const std::string temp = output + ".tmp-" + std::to_string(::getpid());
  try {
    OutputFile out(temp);
    for (int i = 0; i < config.n_layers; ++i) {
      static const std::vector<int32_t> natural;
      const std::vector<uint8_t> bundles = build_layer_bundles(
          weights.layers[i], layout, config.d_ff,
          options.neuron_order.empty() ? natural : options.neuron_order[i]);
      layers[i].checksum = crc32c(bundles.data(), bundles.size());
      out.write_at(layers[i].offset, bundles.data(), bundles.size());
      if (options.progress) options.progress(i + 1, config.n_layers);
    }
    const GgufWriter final_writer = make_writer(layers);
    if (final_writer.file_size(32) != resident_bytes) {
      fail("internal error: the .flm header changed size while converting");
    }
    uint64_t at = 0;
    final_writer.write([&](const void* data, size_t size) {
      out.write_at(at, data, size);
      at += size;
    });
    // Pad the tail so the last layer ends on the region alignment (whole O_DIRECT reads).
    const std::vector<uint8_t> zeros(offset - (layers.back().offset + layers.back().bytes), 0);
    out.write_at(layers.back().offset + layers.back().bytes, zeros.data(), zeros.size());
    out.sync_and_close();
    fs::rename(temp, output);
  } catch (...) {
    std::error_code ec;
    fs::remove(temp, ec);
    throw;
  }
}

bool FlashModelFile::is_flm(const GgufFile& file) { return file.has("flashlm.format_version"); }

std::unique_ptr<FlashModelFile> FlashModelFile::open(const std::string& path) {
  auto owned = GgufFile::open(path);
  auto f = from_gguf(*owned);
  f->owned_ = std::move(owned);
  return f;
}

std::unique_ptr<FlashModelFile> FlashModelFile::from_gguf(const GgufFile& g) {
  auto f = std::unique_ptr<FlashModelFile>(new FlashModelFile());
  const std::string& path = g.path();
  f->path_ = path;
  f->gguf_ = &g;
  if (!is_flm(g)) {
    fail("'{}' is a GGUF model, not a .flm file; convert it first: flashlm convert -m {} -o "
         "MODEL.flm",
         path, path);
  }
  const uint64_t version = g.get_uint("flashlm.format_version");
  if (version != kFlmFormatVersion) {
    fail("{}: .flm format version {} is not supported (this flashlm reads version {}); "
         "re-convert the model",
         path, version, kFlmFormatVersion);
  }
  const ModelConfig config = ModelConfig::from_gguf(g);
  auto type_of = [&](const char* key) {
    const uint64_t t = g.get_uint(key);
    if (!type_traits(static_cast<uint32_t>(t)).computable) {
      fail("{}: {} = {} is not a type flashlm can compute with", path, key, t);
    }
    return static_cast<TensorType>(t);
  };
  f->d_ff_ = static_cast<int>(g.get_uint("flashlm.d_ff"));
  f->source_bytes_ = g.find_uint("flashlm.source.file_bytes").value_or(0);
  f->neuron_order_ = g.find_string("flashlm.neuron_order").value_or("natural");
  if (f->d_ff_ != config.d_ff) fail("{}: flashlm.d_ff disagrees with the model's", path);
  const bool gated = g.get_bool("flashlm.bundle.gated");
  f->layout_ = BundleLayout::make(config.d_model, gated,
                                  gated ? type_of("flashlm.bundle.gate_type") : TensorType::F32,
                                  type_of("flashlm.bundle.up_type"),
                                  type_of("flashlm.bundle.down_type"));
  if (g.get_uint("flashlm.bundle.stride") != f->layout_.stride) {
    fail("{}: corrupt manifest: bundle stride {} disagrees with the bundle types", path,
         g.get_uint("flashlm.bundle.stride"));
  }
  const std::vector<int64_t> offsets = g.get_int_array("flashlm.layer_offsets");
  const std::vector<int64_t> checksums = g.get_int_array("flashlm.layer_checksums");
  if (offsets.size() != static_cast<size_t>(config.n_layers) || checksums.size() != offsets.size()) {
    fail("{}: corrupt manifest: {} layer offsets and {} checksums for {} layers", path,
         offsets.size(), checksums.size(), config.n_layers);
  }
  const uint64_t layer_bytes = static_cast<uint64_t>(f->d_ff_) * f->layout_.stride;
  for (size_t i = 0; i < offsets.size(); ++i) {
    const auto off = static_cast<uint64_t>(offsets[i]);
    if (off % kFlmRegionAlignment != 0 || off > g.file_size() || layer_bytes > g.file_size() - off) {
      fail("{}: truncated or corrupt .flm file: layer {} bundles ({} bytes at offset {}) do not "
           "lie inside the file ({} bytes); re-convert the model",
           path, i, layer_bytes, off, g.file_size());
    }
    f->layers_.push_back({off, layer_bytes, static_cast<uint32_t>(checksums[i])});
  }
  return f;
}

uint64_t FlashModelFile::bundle_region_bytes() const {
  uint64_t total = 0;
  for (const FlmLayer& l : layers_) total += l.bytes;
  return total;
}

void FlashModelFile::check_layer(int layer, const uint8_t* data) const {
  const FlmLayer& l = layers_.at(layer);
  const uint32_t crc = crc32c(data, l.bytes);
  if (crc != l.checksum) {
    fail("{}: layer {} bundles are corrupt (checksum {:08x}, manifest says {:08x}); the file was "
         "damaged after conversion: re-convert the model",
         path_, layer, crc, l.checksum);
  }
}

std::vector<uint8_t> FlashModelFile::read_layer(int layer) const {
  const FlmLayer& l = layers_.at(static_cast<size_t>(layer));
  std::vector<uint8_t> buffer(l.bytes);
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open '{}': {}", path_, std::strerror(errno));
  size_t done = 0;
  while (done < buffer.size()) {
    const ssize_t n = ::pread(fd, buffer.data() + done, buffer.size() - done,
                              static_cast<off_t>(l.offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = n < 0 ? std::strerror(errno) : "unexpected end of file";
      ::close(fd);
      fail("{}: cannot read layer {} at offset {}: {}", path_, layer, l.offset + done, why);
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return buffer;
}

void FlashModelFile::verify(const std::function<void(int, int)>& progress) const {
  for (size_t i = 0; i < layers_.size(); ++i) {
    check_layer(static_cast<int>(i), read_layer(static_cast<int>(i)).data());
    if (progress) progress(static_cast<int>(i) + 1, static_cast<int>(layers_.size()));
  }
}

}  // namespace flashlm
