#include "server/metrics.h"

#include <fmt/format.h>

#include <iterator>

namespace flashlm {
namespace {

void family(std::string& out, const char* name, const char* type, const char* help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

template <typename T>
void metric(std::string& out, const char* name, const char* type, const char* help, T value) {
  family(out, name, type, help);
  fmt::format_to(std::back_inserter(out), "{} {}\n", name, value);
}

}  // namespace

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
}

void Metrics::record_generation(const GenerationRecord& record) {
  std::lock_guard lock(mutex_);
  ++generations_;
  prompt_tokens_ += record.prompt_tokens;
  reused_tokens_ += record.reused_tokens;
  completion_tokens_ += record.completion_tokens;
  last_tokens_per_second_ = record.decode_tokens_per_second;
  flash_bytes_read_ = record.flash_bytes_read;
  cache_hit_rate_ = record.cache_hit_rate;
}

std::string Metrics::render(int queue_waiting, bool busy) const {
  std::lock_guard lock(mutex_);
  std::string out;
  family(out, "flashlm_requests_total", "counter",
         "HTTP requests answered, by endpoint and status");
  for (const auto& [key, count] : requests_) {
    fmt::format_to(std::back_inserter(out),
                   "flashlm_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", key.first,
                   key.second, count);
  }
  metric(out, "flashlm_generations_total", "counter", "Generations run to completion or cancelled",
         generations_);
  metric(out, "flashlm_prompt_tokens_total", "counter", "Prompt tokens of all generations",
         prompt_tokens_);
  metric(out, "flashlm_prompt_tokens_reused_total", "counter",
         "Prompt tokens whose KV cache entries were kept from the previous generation",
         reused_tokens_);
  metric(out, "flashlm_generated_tokens_total", "counter", "Tokens generated", completion_tokens_);
  metric(out, "flashlm_last_tokens_per_second", "gauge",
         "Decode speed of the last generation (tokens/s)", last_tokens_per_second_);
  metric(out, "flashlm_flash_bytes_read_total", "counter",
         "Bytes of FFN weights read from flash (0 when the model is all in DRAM)",
         flash_bytes_read_);
  if (cache_hit_rate_) {
    metric(out, "flashlm_neuron_cache_hit_ratio", "gauge",
           "Share of active FFN neurons found in the DRAM cache (sparse modes)", *cache_hit_rate_);
  }
  metric(out, "flashlm_queue_waiting", "gauge", "Requests waiting for their turn at the engine",
         queue_waiting);
  metric(out, "flashlm_busy", "gauge", "1 while a generation runs", busy ? 1 : 0);
  return out;
}

}  // namespace flashlm
