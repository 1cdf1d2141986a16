// Would storing neurons in another order let sparse reads skip pages? For a .flm model with
// calibrated thresholds, counts how often each FFN neuron is active on calibration text, then
// replays held-out text and reports the share of the bundle region's 4 KiB pages that hold at
// least one active neuron, with neurons in file order and sorted hot-first by that frequency.
// (An O_DIRECT read cannot be smaller than a page, so pages touched bound the bytes read.)
//
//   build/neuron_order MODEL.flm CALIBRATION.txt EVAL.txt [LEVEL=0.5] [TOKENS=1024]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "common/text_file.h"
#include "flash/loaded_model.h"
#include "flash/flash_layout.h"
#include "flash/io_engine.h"
#include "gguf/gguf.h"
#include "sparse/calibrate.h"
#include "sparse/sparsity.h"

namespace {

// Marks the pages that bundle `slot` (of `stride` bytes) overlaps.
void touch(std::vector<char>& pages, size_t slot, size_t stride) {
  using flashlm::kPageBytes;
  for (size_t p = slot * stride / kPageBytes; p <= (slot * stride + stride - 1) / kPageBytes; ++p) {
    pages[p] = 1;
  }
}

}  // namespace

int main(int argc, char** argv) try {
  using namespace flashlm;
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL.flm CALIBRATION.txt EVAL.txt [LEVEL] [TOKENS]\n", argv[0]);
    return 2;
  }
  auto model = Model::load(argv[1]);
  if (!model->flash) throw std::runtime_error("needs a .flm model (flashlm convert)");
  const float level = argc > 4 ? std::stof(argv[4]) : 0.5f;
  CalibrationOptions options;
  options.max_tokens = argc > 5 ? std::stoi(argv[5]) : 1024;
  auto sparse_file = GgufFile::open(sparsity_file_for(argv[1]));
  const std::vector<float> thresholds =
      SparsityProfile::from_gguf(*sparse_file, model->config.n_layers).at(level);
  const int layers = model->config.n_layers, d_ff = model->config.d_ff;
  const size_t stride = model->flash->layout().stride;

  std::vector<std::vector<double>> frequency(layers, std::vector<double>(d_ff));
  run_calibration_text(*model, read_text_file(argv[2], "calibration text"), options,
                       [&](int l, const float*, const float* a) {
                         for (int i = 0; i < d_ff; ++i) frequency[l][i] += std::abs(a[i]) > thresholds[l];
                       },
                       nullptr);
  std::vector<std::vector<size_t>> slot(layers, std::vector<size_t>(d_ff));
  double hottest_quarter = 0, all = 0;
  for (int l = 0; l < layers; ++l) {
    std::vector<int> order(d_ff);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return frequency[l][a] > frequency[l][b]; });
    for (int i = 0; i < d_ff; ++i) {
      slot[l][order[i]] = i;
      all += frequency[l][order[i]];
      if (i < d_ff / 4) hottest_quarter += frequency[l][order[i]];
    }
  }

  const size_t n_pages = flashlm::align_up(d_ff * stride, kPageBytes) / kPageBytes;
  double pages_file = 0, pages_hot = 0, pages_total = 0, active = 0, steps = 0;
  std::vector<char> file_order, hot_first;
  run_calibration_text(*model, read_text_file(argv[3], "evaluation text"), options,
                       [&](int l, const float*, const float* a) {
                         file_order.assign(n_pages, 0);
                         hot_first.assign(n_pages, 0);
                         for (int i = 0; i < d_ff; ++i) {
                           if (std::abs(a[i]) <= thresholds[l]) continue;
                           active += 1;
                           touch(file_order, i, stride);
                           touch(hot_first, slot[l][i], stride);
                         }
                         pages_file += std::count(file_order.begin(), file_order.end(), 1);
                         pages_hot += std::count(hot_first.begin(), hot_first.end(), 1);
                         pages_total += n_pages;
                         steps += 1;
                       },
                       nullptr);
  std::printf("%s, level %.2f, bundle %zu bytes: %.1f%% of neurons active per token; the hottest "
              "quarter of neurons hold %.1f%% of activations\n",
              argv[1], level, stride, 100 * active / (steps * d_ff), 100 * hottest_quarter / all);
  std::printf("pages holding an active neuron: file order %.1f%%, hot-first %.1f%%\n",
              100 * pages_file / pages_total, 100 * pages_hot / pages_total);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
