// A one-line progress bar on stderr for long operations (convert, verify, calibrate).
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

#include <unistd.h>

namespace flashlm {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label) : label_(std::move(label)) {}
  void update(int done, int total) {
    // Redraw on a terminal; in logs print only the end and every tenth step.
    if (!interactive_ && done != total && (total < 10 || done % (total / 10) != 0)) return;
    const int width = 30;
    const int filled = total > 0 ? done * width / total : width;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr, "%s%s [%s%s] %d/%d %.1fs", interactive_ ? "\r" : "", label_.c_str(),
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(), done,
                 total, seconds);
    if (done >= total || !interactive_) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  std::string label_;
  bool interactive_ = isatty(fileno(stderr)) != 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace flashlm
