#include "sparse/predictor.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/error.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "quant/kernels.h"
#include "quant/reference.h"

namespace flashlm {
namespace {

// Each level's tensors and keys carry the level in their names, so one sparsity file can hold
// predictors for several levels.
std::string level_tag(float sparsity) {
  return fmt::format("p{:02d}", static_cast<int>(std::lround(sparsity * 100)));
}

std::string tensor_name(float sparsity, int layer, const char* part) {
  return fmt::format("predictor.{}.blk.{}.{}", level_tag(sparsity), layer, part);
}

std::string key_name(float sparsity, const char* part) {
  return fmt::format("flashlm.predictor.{}.{}", level_tag(sparsity), part);
}

std::string pinned_key(float sparsity, int layer) {
  return fmt::format("flashlm.predictor.{}.blk.{}.pinned", level_tag(sparsity), layer);
}

std::vector<uint8_t> bytes_of(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * sizeof(float));
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

std::vector<float> read_f32(const GgufFile& file, const std::string& name,
                            const std::vector<int64_t>& dims) {
  const GgufTensor& t = file.tensor(name);
  if (t.type != TensorType::F32 || t.dims != dims) {
    fail("{}: predictor tensor {} is {} {}, expected F32 of the model's shape; the sparsity file "
         "does not belong to this model: run flashlm train-predictor again",
         file.path(), name, type_name(t.type), t.shape_string());
  }
  const std::span<const uint8_t> data = file.tensor_data(t);
  std::vector<float> out(data.size() / sizeof(float));
  std::memcpy(out.data(), data.data(), data.size());
  return out;
}

}  // namespace

LayerPredictor::LayerPredictor(int rank_, int d_model_, int d_ff_)
    : rank(rank_),
      d_model(d_model_),
      d_ff(d_ff_),
      a(static_cast<size_t>(rank_) * d_model_),
      b(static_cast<size_t>(d_ff_) * rank_),
      bias(d_ff_) {}

void LayerPredictor::logits(const float* x, float* hidden, float* out) const {
  for (int j = 0; j < rank; ++j) hidden[j] = dot_f32(&a[static_cast<size_t>(j) * d_model], x, d_model);
  for (int i = 0; i < d_ff; ++i) {
    out[i] = dot_f32(&b[static_cast<size_t>(i) * rank], hidden, rank) + bias[i];
  }
}

namespace {

std::vector<uint16_t> compact(const std::vector<float>& values) {
  std::vector<uint16_t> out(values.size());
  quantize_row_reference(CompactLayerPredictor::kType, values.data(), out.data(),
                         std::ssize(values));
  return out;
}

}  // namespace

CompactLayerPredictor::CompactLayerPredictor(const LayerPredictor& p)
    : rank(p.rank),
      d_model(p.d_model),
      d_ff(p.d_ff),
      a(compact(p.a)),
      b(compact(p.b)),
      bias(p.bias),
      decision(p.decision),
      pinned(p.pinned) {}

void CompactLayerPredictor::hidden(const PreparedInput* xs, int64_t n, float* out) const {
  matmul_rows(kType, reinterpret_cast<const uint8_t*>(a.data()), d_model * sizeof(uint16_t), xs,
              n, 0, rank, out, rank);
}

void CompactLayerPredictor::logits(const PreparedInput* hidden, int64_t n, int begin, int end,
                                   float* out, int64_t ldy) const {
  matmul_rows(kType, reinterpret_cast<const uint8_t*>(b.data() + static_cast<size_t>(begin) * rank),
              rank * sizeof(uint16_t), hidden, n, 0, end - begin, out, ldy);
  for (int64_t t = 0; t < n; ++t) {
    for (int i = begin; i < end; ++i) out[t * ldy + i - begin] += bias[i];
  }
}

uint64_t CompactLayerPredictor::bytes() const {
  return (a.size() + b.size()) * sizeof(uint16_t) + (bias.size() + pinned.size()) * sizeof(float);
}

uint64_t CompactLayerPredictor::bytes_for(const LayerPredictor& p) {
  return (p.a.size() + p.b.size()) * sizeof(uint16_t) +
         (p.bias.size() + p.pinned.size()) * sizeof(float);
}

CompactPredictor::CompactPredictor(ActivationPredictor&& p) : sparsity(p.sparsity) {
  layers.reserve(p.layers.size());
  for (LayerPredictor& layer : p.layers) {
    layers.emplace_back(layer);
    layer = LayerPredictor{};
  }
}

uint64_t CompactPredictor::bytes() const {
  uint64_t total = 0;
  for (const CompactLayerPredictor& layer : layers) total += layer.bytes();
  return total;
}

uint64_t CompactPredictor::bytes_for(const ActivationPredictor& p) {
  uint64_t total = 0;
  for (const LayerPredictor& layer : p.layers) total += CompactLayerPredictor::bytes_for(layer);
  return total;
}

void ActivationPredictor::write_to(GgufWriter& w) const {
  std::vector<float> decision, recall, precision;
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerPredictor& p = layers[l];
    const int layer = static_cast<int>(l);
    w.add_tensor(tensor_name(sparsity, layer, "a"), TensorType::F32, {p.d_model, p.rank},
                 bytes_of(p.a));
    w.add_tensor(tensor_name(sparsity, layer, "b"), TensorType::F32, {p.rank, p.d_ff},
                 bytes_of(p.b));
    w.add_tensor(tensor_name(sparsity, layer, "bias"), TensorType::F32, {p.d_ff},
                 bytes_of(p.bias));
    w.add_int32_array(pinned_key(sparsity, layer), p.pinned);
    decision.push_back(p.decision);
    recall.push_back(p.recall);
    precision.push_back(p.precision);
  }
  w.add_float32(key_name(sparsity, "sparsity"), sparsity);
  w.add_float32_array(key_name(sparsity, "decision"), decision);
  w.add_float32_array(key_name(sparsity, "recall"), recall);
  w.add_float32_array(key_name(sparsity, "precision"), precision);
}

std::vector<float> ActivationPredictor::levels_in(const GgufFile& file) {
  if (!file.has("flashlm.predictor.levels")) return {};
  return file.get_float_array("flashlm.predictor.levels");
}

std::optional<ActivationPredictor> ActivationPredictor::from_gguf(const GgufFile& file,
                                                                  float sparsity, int n_layers,
                                                                  int d_model, int d_ff) {
  bool found = false;
  for (float level : levels_in(file)) found |= std::abs(level - sparsity) < 1e-4f;
  if (!found) return std::nullopt;
  ActivationPredictor p;
  p.sparsity = sparsity;
  const std::vector<float> decision = file.get_float_array(key_name(sparsity, "decision"));
  const std::vector<float> recall = file.get_float_array(key_name(sparsity, "recall"));
  const std::vector<float> precision = file.get_float_array(key_name(sparsity, "precision"));
  if (decision.size() != static_cast<size_t>(n_layers) || recall.size() != decision.size() ||
      precision.size() != decision.size()) {
    fail("{}: the predictor for sparsity {:.2f} has {} layers, the model {}; the sparsity file "
         "does not belong to this model: run flashlm train-predictor again",
         file.path(), sparsity, decision.size(), n_layers);
  }
  for (int l = 0; l < n_layers; ++l) {
    const GgufTensor& a = file.tensor(tensor_name(sparsity, l, "a"));
    const int rank = a.dims.size() == 2 ? static_cast<int>(a.dims[1]) : 0;
    if (rank <= 0) fail("{}: predictor tensor {} has shape {}", file.path(), a.name, a.shape_string());
    LayerPredictor layer(rank, d_model, d_ff);
    layer.a = read_f32(file, a.name, {d_model, rank});
    layer.b = read_f32(file, tensor_name(sparsity, l, "b"), {rank, d_ff});
    layer.bias = read_f32(file, tensor_name(sparsity, l, "bias"), {d_ff});
    layer.decision = decision[l];
    if (const std::string key = pinned_key(sparsity, l); file.has(key)) {  // older files: none
      for (int64_t i : file.get_int_array(key)) {
        if (i < 0 || i >= d_ff || (!layer.pinned.empty() && i <= layer.pinned.back())) {
          fail("{}: {} lists neuron {} out of order or outside the model's {} neurons; run "
               "flashlm train-predictor again",
               file.path(), key, i, d_ff);
        }
        layer.pinned.push_back(static_cast<int32_t>(i));
      }
    }
    layer.recall = recall[l];
    layer.precision = precision[l];
    p.layers.push_back(std::move(layer));
  }
  return p;
}

void save_predictor(const std::string& path, const ActivationPredictor& predictor) {
  GgufWriter writer;
  std::vector<float> levels = {predictor.sparsity};
  {
    auto old = GgufFile::open(path);
    const std::string own_keys = "flashlm.predictor." + level_tag(predictor.sparsity) + ".";
    const std::string own_tensors = "predictor." + level_tag(predictor.sparsity) + ".";
    for (const auto& [key, value] : old->metadata()) {
      if (key == "flashlm.predictor.levels" || key.rfind(own_keys, 0) == 0) continue;
      writer.add_value(key, value);
    }
    for (float level : ActivationPredictor::levels_in(*old)) {
      if (std::abs(level - predictor.sparsity) >= 1e-4f) levels.push_back(level);
    }
    for (const GgufTensor& t : old->tensors()) {
      if (t.name.rfind(own_tensors, 0) == 0) continue;
      const std::span<const uint8_t> data = old->tensor_data(t);
      writer.add_tensor(t.name, t.type, t.dims, std::vector<uint8_t>(data.begin(), data.end()));
    }
  }
  writer.add_float32_array("flashlm.predictor.levels", levels);
  predictor.write_to(writer);
  // Written aside and renamed, so a failed write leaves the old file whole.
  const std::string temp = path + ".tmp";
  writer.write(temp);
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    fail("cannot replace {} with {}: {}", path, temp, std::strerror(errno));
  }
}

}  // namespace flashlm
