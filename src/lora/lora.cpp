#include "lora/lora.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "common/error.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "quant/kernels.h"

namespace flashlm {
namespace {

constexpr std::array<const char*, kLoraTargets> kNames = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

// "blk.N.<target>.weight" -> layer and target; false for any other name.
bool parse_base_name(const std::string& name, int n_layers, int& layer, LoraTarget& target) {
  if (name.rfind("blk.", 0) != 0) return false;
  const size_t dot = name.find('.', 4);
  if (dot == std::string::npos || dot == 4) return false;
  int value = 0;
  for (size_t i = 4; i < dot; ++i) {
    if (name[i] < '0' || name[i] > '9' || value > 100000) return false;
    value = value * 10 + (name[i] - '0');
  }
  if (value >= n_layers) return false;
  const std::string rest = name.substr(dot + 1);
  for (int t = 0; t < kLoraTargets; ++t) {
    if (rest == std::string(kNames[t]) + ".weight") {
      layer = value;
      target = static_cast<LoraTarget>(t);
      return true;
    }
  }
  return false;
}

// A 2-D tensor of an adapter as floats (F32, F16, BF16 or Q8_0, what llama.cpp's converter
// writes), checked to be rows x cols.
std::vector<float> read_matrix(const GgufFile& file, const GgufTensor& t, int64_t rows,
                               int64_t cols) {
  if (t.dims.size() != 2 || t.dims[0] != cols || t.dims[1] != rows) {
    fail("{}: tensor '{}' has shape {}, but this model needs {{{}, {}}} there (is the adapter "
         "for another base model?)",
         file.path(), t.name, t.shape_string(), cols, rows);
  }
  if (t.type != TensorType::F32 && t.type != TensorType::F16 && t.type != TensorType::BF16 &&
      t.type != TensorType::Q8_0) {
    fail("{}: tensor '{}' is {}; LoRA tensors are read as F32, F16, BF16 or Q8_0", file.path(),
         t.name, type_name(t.type));
  }
  if (cols % type_traits(t.type).block_size != 0) {
    fail("{}: tensor '{}' has rows of {} values, not whole {} blocks", file.path(), t.name, cols,
         type_name(t.type));
  }
  const std::span<const uint8_t> data = file.tensor_data(t);
  std::vector<float> out(static_cast<size_t>(rows * cols));
  const size_t stride = row_bytes(t.type, cols);
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_row(t.type, data.data() + r * stride, out.data() + r * cols, cols);
  }
  for (float v : out) {
    if (!std::isfinite(v)) fail("{}: tensor '{}' holds a non-finite value", file.path(), t.name);
  }
  return out;
}

}  // namespace

const char* lora_target_name(LoraTarget target) { return kNames[static_cast<int>(target)]; }

std::string lora_base_tensor_name(int layer, LoraTarget t) {
  return "blk." + std::to_string(layer) + "." + lora_target_name(t) + ".weight";
}

bool is_ffn_target(LoraTarget t) {
  return t == LoraTarget::FfnGate || t == LoraTarget::FfnUp || t == LoraTarget::FfnDown;
}

std::vector<LoraTarget> parse_lora_targets(const std::string& list) {
  std::vector<LoraTarget> out;
  auto add = [&](LoraTarget t) {
    if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
  };
  std::stringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item == "all" || item == "attn" || item == "ffn") {
      for (int t = 0; t < kLoraTargets; ++t) {
        const bool ffn = is_ffn_target(static_cast<LoraTarget>(t));
        if (item == "all" || (item == "ffn") == ffn) add(static_cast<LoraTarget>(t));
      }
      continue;
    }
    bool found = false;
    for (int t = 0; t < kLoraTargets; ++t) {
      if (item == kNames[t]) {
        add(static_cast<LoraTarget>(t));
        found = true;
      }
    }
    if (!found) {
      fail("unknown LoRA module '{}': the choices are attn_q, attn_k, attn_v, attn_output, "
           "ffn_gate, ffn_up, ffn_down, or attn, ffn, all",
           item);
    }
  }
  if (out.empty()) fail("no LoRA module given: name at least one (e.g. attn_q,attn_v)");
  return out;
}

int64_t lora_target_rows(const LoraShapes& c, LoraTarget t) {
  switch (t) {
    case LoraTarget::AttnQ: return c.q_dim;
    case LoraTarget::AttnK:
    case LoraTarget::AttnV: return c.kv_dim;
    case LoraTarget::AttnOutput:
    case LoraTarget::FfnDown: return c.d_model;
    case LoraTarget::FfnGate:
    case LoraTarget::FfnUp: return c.d_ff;
  }
  return 0;
}

int64_t lora_target_cols(const LoraShapes& c, LoraTarget t) {
  switch (t) {
    case LoraTarget::AttnOutput: return c.q_dim;
    case LoraTarget::FfnDown: return c.d_ff;
    default: return c.d_model;
  }
}

bool LoraAdapter::adapts_ffn() const {
  for (const auto& layer : layers) {
    for (int t = 0; t < kLoraTargets; ++t) {
      if (!layer[t].empty() && is_ffn_target(static_cast<LoraTarget>(t))) return true;
    }
  }
  return false;
}

int64_t LoraAdapter::parameters() const {
  int64_t n = 0;
  for (const auto& layer : layers) {
    for (const LoraPair& p : layer) n += static_cast<int64_t>(p.a.size() + p.b.size());
  }
  return n;
}

LoraAdapter LoraAdapter::load(const std::string& path, const LoraShapes& config) {
  const std::unique_ptr<GgufFile> file = GgufFile::open(path);
  const std::string type = file->find_string("general.type").value_or("");
  if (type != "adapter") {
    fail("{} is not a LoRA adapter (general.type is '{}', an adapter says 'adapter'); pass the "
         "base model with -m and the adapter with --lora",
         path, type);
  }
  const std::string adapter_type = file->find_string("adapter.type").value_or("");
  if (adapter_type != "lora") {
    fail("{}: adapter.type is '{}'; flashlm reads LoRA adapters ('lora')", path, adapter_type);
  }
  LoraAdapter a;
  a.path = path;
  a.architecture = file->find_string("general.architecture").value_or("");
  if (a.architecture != config.architecture) {
    fail("{} adapts a '{}' model, but the base model is '{}'", path, a.architecture,
         config.architecture);
  }
  a.alpha = static_cast<float>(file->find_float("adapter.lora.alpha").value_or(0.0));
  if (!std::isfinite(a.alpha)) fail("{}: adapter.lora.alpha is not a finite number", path);
  a.layers.resize(config.n_layers);

  // Pair up NAME.lora_a and NAME.lora_b.
  struct Found {
    const GgufTensor* a = nullptr;
    const GgufTensor* b = nullptr;
  };
  std::vector<std::array<Found, kLoraTargets>> found(config.n_layers);
  for (const GgufTensor& t : file->tensors()) {
    const bool is_a = t.name.ends_with(".lora_a"), is_b = t.name.ends_with(".lora_b");
    if (!is_a && !is_b) {
      if (t.name.ends_with("_norm.weight")) continue;  // llama.cpp ignores these too
      fail("{}: tensor '{}' is not a LoRA tensor (names end in .lora_a or .lora_b)", path, t.name);
    }
    const std::string base = t.name.substr(0, t.name.size() - 7);
    int layer = 0;
    LoraTarget target{};
    if (!parse_base_name(base, config.n_layers, layer, target)) {
      fail("{}: tensor '{}' adapts '{}', which flashlm cannot adapt (it adapts blk.N.attn_q, "
           "attn_k, attn_v, attn_output, ffn_gate, ffn_up and ffn_down of layers 0..{})",
           path, t.name, base, config.n_layers - 1);
    }
    if (target == LoraTarget::FfnGate && !config.ffn_gated) {
      fail("{}: tensor '{}' adapts ffn_gate, which this model does not have", path, t.name);
    }
    (is_a ? found[layer][static_cast<int>(target)].a : found[layer][static_cast<int>(target)].b) =
        &t;
  }
  for (int l = 0; l < config.n_layers; ++l) {
    for (int ti = 0; ti < kLoraTargets; ++ti) {
      const Found& f = found[l][ti];
      if (!f.a && !f.b) continue;
      const auto target = static_cast<LoraTarget>(ti);
      const std::string base = lora_base_tensor_name(l, target);
      if (!f.a || !f.b) {
        fail("{}: '{}' has {} but not {}; a LoRA pair needs both", path, base,
             f.a ? "lora_a" : "lora_b", f.a ? "lora_b" : "lora_a");
      }
      const int64_t in = lora_target_cols(config, target), out = lora_target_rows(config, target);
      if (f.a->dims.size() != 2 || f.b->dims.size() != 2 || f.a->dims[1] != f.b->dims[0]) {
        fail("{}: '{}' has lora_a {} and lora_b {}; they must be {{in, rank}} and {{rank, out}} "
             "(an adapter from llama.cpp's old finetune example stores lora_a transposed: "
             "convert it again)",
             path, base, f.a->shape_string(), f.b->shape_string());
      }
      const int64_t rank = f.a->dims[1];
      if (rank <= 0 || rank > std::min(in, out)) {
        fail("{}: '{}' has rank {}, outside 1..{}", path, base, rank, std::min(in, out));
      }
      LoraPair& p = a.pair(l, target);
      p.rank = rank;
      p.in = in;
      p.out = out;
      p.a = read_matrix(*file, *f.a, rank, in);
      p.b = read_matrix(*file, *f.b, out, rank);
    }
  }
  if (a.parameters() == 0) fail("{} holds no LoRA tensors", path);
  return a;
}

uint64_t LoraAdapter::file_float_bytes(const std::string& path) {
  try {
    const std::unique_ptr<GgufFile> file = GgufFile::open(path);
    uint64_t n = 0;
    for (const GgufTensor& t : file->tensors()) {
      if (t.name.ends_with(".lora_a") || t.name.ends_with(".lora_b")) {
        n += static_cast<uint64_t>(t.elements()) * sizeof(float);
      }
    }
    return n;
  } catch (const Error&) {
    return 0;
  }
}

void LoraAdapter::save(const std::string& out_path, const std::string& base_name) const {
  GgufWriter w;
  w.add_string("general.architecture", architecture);
  w.add_string("general.type", "adapter");
  if (!base_name.empty()) w.add_string("general.name", base_name);
  w.add_string("adapter.type", "lora");
  w.add_float32("adapter.lora.alpha", alpha);
  for (size_t l = 0; l < layers.size(); ++l) {
    for (int t = 0; t < kLoraTargets; ++t) {
      const LoraPair& p = layers[l][t];
      if (p.empty()) continue;
      const std::string base = lora_base_tensor_name(static_cast<int>(l), static_cast<LoraTarget>(t));
      w.add_tensor_view(base + ".lora_a", TensorType::F32, {p.in, p.rank},
                        {reinterpret_cast<const uint8_t*>(p.a.data()), p.a.size() * 4});
      w.add_tensor_view(base + ".lora_b", TensorType::F32, {p.rank, p.out},
                        {reinterpret_cast<const uint8_t*>(p.b.data()), p.b.size() * 4});
    }
  }
  w.write(out_path);
}

void LoraSet::add(const LoraAdapter& adapter, float scale) {
  if (!std::isfinite(scale)) fail("the LoRA scale of {} is not a finite number", adapter.path);
  entries_.push_back({&adapter, scale});
}

bool LoraSet::adapts_ffn() const {
  for (const Entry& e : entries_) {
    if (e.adapter->adapts_ffn()) return true;
  }
  return false;
}

bool LoraSet::adapts(int layer, LoraTarget target) const {
  for (const Entry& e : entries_) {
    if (!e.adapter->pair(layer, target).empty()) return true;
  }
  return false;
}

uint64_t LoraSet::bytes() const {
  uint64_t n = 0;
  for (const Entry& e : entries_) n += e.adapter->bytes();
  return n;
}

float LoraSet::pair_scale(const LoraAdapter& adapter, const LoraPair& pair, float scale) {
  return adapter.alpha != 0 ? scale * adapter.alpha / static_cast<float>(pair.rank) : scale;
}

void LoraSet::apply(int layer, LoraTarget target, const float* x, int64_t n_tokens,
                    float* y) const {
  thread_local std::vector<float> ax;
  for (const Entry& e : entries_) {
    const LoraPair& p = e.adapter->pair(layer, target);
    if (p.empty()) continue;
    const float s = pair_scale(*e.adapter, p, e.scale);
    ax.resize(static_cast<size_t>(p.rank));
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * p.in;
      float* yt = y + t * p.out;
      // ax = s * A x, then y += B ax: rank dots of `in` values, `out` dots of `rank`.
      for (int64_t r = 0; r < p.rank; ++r) ax[r] = s * dot_f32(p.a.data() + r * p.in, xt, p.in);
      for (int64_t o = 0; o < p.out; ++o) yt[o] += dot_f32(p.b.data() + o * p.rank, ax.data(), p.rank);
    }
  }
}

void LoraSet::apply_reference(const LoraPair& p, float scale, const float* x, int64_t n_tokens,
                              float* y) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t o = 0; o < p.out; ++o) {
      double sum = 0;
      for (int64_t r = 0; r < p.rank; ++r) {
        double ax = 0;
        for (int64_t i = 0; i < p.in; ++i) ax += double(p.a[r * p.in + i]) * x[t * p.in + i];
        sum += double(p.b[o * p.rank + r]) * ax;
      }
      y[t * p.out + o] += static_cast<float>(scale * sum);
    }
  }
}

}  // namespace flashlm
