// The numbers behind GET /metrics, rendered in Prometheus' text format.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace flashlm {

// What one finished generation adds. The engine's flash counters are copied here by the
// generation itself, under its turn: reading them from a /metrics request would race with it.
struct GenerationRecord {
  int prompt_tokens = 0;
  int reused_tokens = 0;  // prompt tokens found already in the KV cache
  int completion_tokens = 0;
  double decode_tokens_per_second = 0;
  uint64_t flash_bytes_read = 0;         // since the server started; 0 when all is in DRAM
  std::optional<double> cache_hit_rate;  // of the sparse modes' neuron cache
};

class Metrics {
 public:
  void count_request(const std::string& endpoint, int status);
  void record_generation(const GenerationRecord& record);
  // queue_waiting and busy: the turn queue's state now.
  std::string render(int queue_waiting, bool busy) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;  // (endpoint, status) -> count
  uint64_t generations_ = 0;
  uint64_t prompt_tokens_ = 0;
  uint64_t reused_tokens_ = 0;
  uint64_t completion_tokens_ = 0;
  double last_tokens_per_second_ = 0;
  uint64_t flash_bytes_read_ = 0;
  std::optional<double> cache_hit_rate_;
};

}  // namespace flashlm
