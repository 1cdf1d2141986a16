// The flash layout (.flm): the model rearranged for streaming its FFN from disk.
//
// A .flm file is a GGUF file holding the resident part of the model (embeddings, attention,
// norms, output head, tokenizer, all metadata) plus flashlm.* keys, followed by the bundle
// region. In the bundle region each layer is one 4 KiB-aligned run of d_ff bundles; bundle i
// holds everything neuron i needs, back to back (the paper's row-column bundling):
//
//   [ row i of W_gate | row i of W_up | column i of W_down, stored as a row ]
//
// so the bundles of any run of consecutive neurons are one contiguous read.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "quant/types.h"

namespace flashlm {

constexpr uint32_t kFlmFormatVersion = 1;
constexpr uint64_t kFlmRegionAlignment = 4096;

// Byte layout of one neuron's bundle; the same for every layer of a model.
struct BundleLayout {
  int d_model = 0;
  bool gated = true;
  TensorType gate_type = TensorType::F32;  // unused when !gated
  TensorType up_type = TensorType::F32;
  TensorType down_type = TensorType::F32;
  size_t gate_bytes = 0, up_bytes = 0, down_bytes = 0;
  size_t stride = 0;  // bytes from one bundle to the next (parts padded to 16 bytes)

  static BundleLayout make(int d_model, bool gated, TensorType gate, TensorType up,
                           TensorType down);
  size_t gate_offset() const { return 0; }
  size_t up_offset() const { return gate_bytes; }
  size_t down_offset() const { return gate_bytes + up_bytes; }
  // "1360 bytes (gate Q4_1, up Q4_1, down Q8_0)"
  std::string describe() const;
};

struct FlmLayer {
  uint64_t offset = 0;  // absolute file offset of bundle 0, 4 KiB aligned
  uint64_t bytes = 0;   // d_ff * stride
  uint32_t checksum = 0;  // CRC-32C of the layer's bytes
};

// What `convert` stores in bundles. Gate and up rows can keep the GGUF's own quantization
// (each row is whole blocks); the down projection's columns cut across its blocks, so they
// are re-quantized from exact dequantized values.
enum class BundleType {
  Source,  // gate/up as in the GGUF, down columns as Q8_0: smallest, closest to the GGUF
  Q8_0,    // everything Q8_0: ~1.06 bytes per weight, fast kernels
  F16,     // everything F16: 2 bytes per weight, exact for F16/BF16 sources
};
BundleType parse_bundle_type(const std::string& name);

// The types a down column can be stored as (`convert --down-type`), largest first. A column
// is d_model values, quantized in blocks along d_model: the 32-value types fit any d_model
// that is a multiple of 32, the K types (blocks of 256) only multiples of 256.
const std::vector<TensorType>& down_column_types();
// "q8_0", "q4_k", ... (lower case, as the command line spells them) to the type.
TensorType parse_down_type(const std::string& name);
// Throws, naming the types that do fit, when `type` cannot store a down column of d_model values.
void check_down_type(TensorType type, int d_model);

struct ConvertOptions {
  BundleType bundle_type = BundleType::Source;
  // How down columns are stored; unset: Q8_0 (F16 with BundleType::F16). Applies with every
  // bundle type: it trades the bytes read per token against the down projection's precision.
  std::optional<TensorType> down_type;
  bool force = false;  // overwrite an existing output
  // The order of each layer's neurons in the bundle region: neuron_order[l][j] is the source
  // neuron stored as bundle j of layer l, one permutation of 0..d_ff-1 per layer; empty: the
  // natural order. The FFN's output is a sum over neurons, so any order computes the same
  // model (up to float summation order); the order only decides which neurons come first, and
  // the engine keeps each layer's first bundles resident (see `convert --neuron-order`).
  std::vector<std::vector<int32_t>> neuron_order;
  // What the file records as flashlm.neuron_order when neuron_order is set ("importance").
  std::string neuron_order_name = "custom";
  std::function<void(int layer, int n_layers)> progress;
};

// Throws, naming the layer and the neuron, unless `order` is empty or holds n_layers
// permutations of 0..d_ff-1.
void check_neuron_order(const std::vector<std::vector<int32_t>>& order, int n_layers, int d_ff);

// Writes `output` from the GGUF model `input`. The file is written under a temporary name and
// renamed into place only when complete and synced, so an interrupted conversion never leaves
// a file that looks valid.
void convert_to_flm(const std::string& input, const std::string& output,
                    const ConvertOptions& options);

// An opened .flm file: the resident part as a GgufFile plus the bundle manifest.
class FlashModelFile {
 public:
  // Opens `path` and owns it.
  static std::unique_ptr<FlashModelFile> open(const std::string& path);
  // Reads the manifest of an already opened file, which must outlive the result.
  static std::unique_ptr<FlashModelFile> from_gguf(const GgufFile& file);
  static bool is_flm(const GgufFile& file);

  const GgufFile& gguf() const { return *gguf_; }
  const std::string& path() const { return path_; }
  const BundleLayout& layout() const { return layout_; }
  const std::vector<FlmLayer>& layers() const { return layers_; }
  int d_ff() const { return d_ff_; }
  uint64_t bundle_region_bytes() const;
  // Size of the GGUF file this .flm was converted from (what a user calls the model's size and
  // what `--mem-budget N%` is a share of); 0 for files converted before it was recorded.
  uint64_t source_bytes() const { return source_bytes_; }
  // How `convert` ordered each layer's neurons (flashlm.neuron_order): "natural" (bundle i is
  // the GGUF's neuron i; also files converted before the key existed), "importance", ...
  const std::string& neuron_order() const { return neuron_order_; }

  // Reads one layer's bundles (layers()[layer].bytes bytes) with buffered reads.
  std::vector<uint8_t> read_layer(int layer) const;

  // Reads every layer (buffered) and compares checksums; throws naming the first bad layer.
  void verify(const std::function<void(int, int)>& progress = nullptr) const;
  // Checks one layer's bytes (already in memory) against the manifest.
  void check_layer(int layer, const uint8_t* data) const;

 private:
  std::string path_;
  std::unique_ptr<GgufFile> owned_;
  const GgufFile* gguf_ = nullptr;
  BundleLayout layout_;
  std::vector<FlmLayer> layers_;
  int d_ff_ = 0;
  uint64_t source_bytes_ = 0;
  std::string neuron_order_ = "natural";
};

}  // namespace flashlm
