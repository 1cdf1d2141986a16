// A one-line progress bar on stderr for long operations (convert, verify, calibrate).
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

namespace flashlm {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label) : label_(std::move(label)) {}
  void update(int done, int total) {
    const int width = 30;
    const int filled = total > 0 ? done * width / total : width;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr, "\r%s [%s%s] %d/%d %.1fs", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), done, total, seconds);
    if (done >= total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  std::string label_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace flashlm
