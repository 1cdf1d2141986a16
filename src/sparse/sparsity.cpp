#include "sparse/sparsity.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"

namespace flashlm {

const std::vector<float>& SparsityProfile::at(float level) const {
  for (size_t i = 0; i < levels.size(); ++i) {
    if (std::abs(levels[i] - level) < 1e-4f) return thresholds[i];
  }
  std::string known;
  for (float l : levels) known += fmt::format(" {:.2f}", l);
  fail("no thresholds for sparsity {:.2f}; the sparsity file has:{}; run flashlm calibrate with "
       "--levels including it",
       level, known.empty() ? " none" : known);
}

void SparsityProfile::write_to(GgufWriter& w) const {
  w.add_float32_array("flashlm.sparsity.levels", levels);
  std::vector<float> flat;
  for (const auto& per_layer : thresholds) flat.insert(flat.end(), per_layer.begin(), per_layer.end());
  w.add_float32_array("flashlm.sparsity.thresholds", flat);
}

SparsityProfile SparsityProfile::from_gguf(const GgufFile& f, int n_layers) {
  SparsityProfile p;
  p.levels = f.get_float_array("flashlm.sparsity.levels");
  const std::vector<float> flat = f.get_float_array("flashlm.sparsity.thresholds");
  if (flat.size() != p.levels.size() * static_cast<size_t>(n_layers)) {
    fail("{}: {} thresholds for {} sparsity levels of {} layers; the sparsity file does not belong "
         "to this model: run flashlm calibrate again",
         f.path(), flat.size(), p.levels.size(), n_layers);
  }
  for (size_t i = 0; i < p.levels.size(); ++i) {
    const float level = p.levels[i];
    if (!(level >= 0 && level < 1) || (i > 0 && !(level > p.levels[i - 1]))) {
      fail("{}: sparsity level {} is not in [0, 1) or not above the one before it; the sparsity "
           "file is damaged: run flashlm calibrate again",
           f.path(), level);
    }
    p.thresholds.emplace_back(flat.begin() + i * n_layers, flat.begin() + (i + 1) * n_layers);
    for (float t : p.thresholds.back()) {
      if (!(t >= 0 && std::isfinite(t))) {
        fail("{}: threshold {} for sparsity {:.2f} is not a finite value >= 0; the sparsity file "
             "is damaged: run flashlm calibrate again",
             f.path(), t, level);
      }
    }
  }
  return p;
}

ActivationSampler::ActivationSampler(int n_layers, size_t samples_per_layer, uint64_t seed)
    : samples_(n_layers), seen_(n_layers, 0), capacity_(samples_per_layer), rng_(seed) {}

void ActivationSampler::reserve(size_t values) {
  for (std::vector<float>& s : samples_) s.reserve(std::min(values, capacity_));
}

void ActivationSampler::add(int layer, const float* a, int64_t n) {
  std::vector<float>& s = samples_[layer];
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t seen = seen_[layer]++;
    if (s.size() < capacity_) {
      s.push_back(std::abs(a[i]));
    } else {
      const uint64_t j = std::uniform_int_distribution<uint64_t>(0, seen)(rng_);
      if (j < capacity_) s[j] = std::abs(a[i]);
    }
  }
}

SparsityProfile ActivationSampler::profile(const std::vector<float>& levels) const {
  SparsityProfile p;
  p.levels = levels;
  std::sort(p.levels.begin(), p.levels.end());
  for (float level : p.levels) {
    if (level < 0 || level >= 1) fail("sparsity {} must be in [0, 1)", level);
    std::vector<float> per_layer;
    for (const std::vector<float>& s : samples_) {
      if (s.empty() || level == 0) {
        per_layer.push_back(0.0f);
        continue;
      }
      std::vector<float> sorted = s;
      const size_t k = std::min(sorted.size() - 1, static_cast<size_t>(level * sorted.size()));
      std::nth_element(sorted.begin(), sorted.begin() + k, sorted.end());
      per_layer.push_back(sorted[k]);
    }
    p.thresholds.push_back(std::move(per_layer));
  }
  return p;
}

std::string sparsity_file_for(const std::string& model_path) { return model_path + ".sparse"; }

}  // namespace flashlm
