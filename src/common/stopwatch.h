// Wall-clock intervals for the per-token breakdown (I/O, memory management, compute).
#pragma once

#include <chrono>

namespace flashlm {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace flashlm
