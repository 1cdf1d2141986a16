#include "model/weight_pager.h"

#include <algorithm>
#include <span>

#include "gguf/gguf.h"

namespace flashlm {
namespace {

std::span<const uint8_t> bytes_of(const Matrix& m) { return {m.data, m.data ? m.bytes() : 0}; }

std::span<const uint8_t> rows_of(const Matrix& m, int64_t begin, int64_t end) {
  begin = std::clamp<int64_t>(begin, 0, m.rows);
  end = std::clamp<int64_t>(end, begin, m.rows);
  return {m.row(begin), static_cast<size_t>(end - begin) * m.row_bytes};
}

template <typename F>
void for_each_matrix(const LayerWeights& w, F f) {
  for (const Matrix* m : {&w.wq, &w.wk, &w.wv, &w.wo, &w.ffn_gate, &w.ffn_up, &w.ffn_down}) {
    if (m->data) f(*m);
  }
}

}  // namespace

WeightPager::WeightPager(const GgufFile& file, const ModelWeights& weights)
    : file_(file), weights_(weights) {
  file.read_only_what_is_touched();
}

void WeightPager::prefetch_layer(int layer) const {
  if (layer < 0 || layer >= static_cast<int>(weights_.layers.size())) return;
  for_each_matrix(weights_.layers[layer], [&](const Matrix& m) { file_.prefetch(bytes_of(m)); });
}

void WeightPager::release_layer(int layer) const {
  if (layer < 0 || layer >= static_cast<int>(weights_.layers.size())) return;
  for_each_matrix(weights_.layers[layer], [&](const Matrix& m) { file_.release(bytes_of(m)); });
}

void WeightPager::prefetch_output_rows(int64_t begin, int64_t end) const {
  file_.prefetch(rows_of(weights_.output, begin, end));
}

void WeightPager::release_output_rows(int64_t begin, int64_t end) const {
  file_.release(rows_of(weights_.output, begin, end));
}

void WeightPager::release_embedding() const {
  if (weights_.token_embedding.data != weights_.output.data) {
    file_.release(bytes_of(weights_.token_embedding));
  }
}

uint64_t WeightPager::layer_bytes(const LayerWeights& layer) {
  uint64_t bytes = 0;
  for_each_matrix(layer, [&](const Matrix& m) { bytes += m.bytes(); });
  return bytes;
}

uint64_t WeightPager::largest_layer_bytes() const {
  uint64_t most = 0;
  for (const LayerWeights& w : weights_.layers) most = std::max(most, layer_bytes(w));
  return most;
}

}  // namespace flashlm
