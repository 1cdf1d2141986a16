// The loss curve of a fine-tuning run as a PNG: training loss per step (grey) and held-out
// loss (blue), with the axes' ranges written at their ends.
#pragma once

#include <string>
#include <vector>

namespace flashlm {

struct LossPoint {
  int step = 0;
  double loss = 0;
};

void write_loss_plot(const std::string& path, const std::vector<LossPoint>& train,
                     const std::vector<LossPoint>& eval, int steps);

}  // namespace flashlm
