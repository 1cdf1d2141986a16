// `flashlm bench`: the paper's per-token breakdown (I/O, memory management, compute) for each
// FFN mode on the standard decode workload: a 128-token prompt from real text, then 256
// greedy tokens, batch 1. Modes run one after another in one process, side by side.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "common/error.h"
#include "common/text_file.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "sampling/sampler.h"

namespace flashlm {
namespace {

struct BenchOptions {
  CommonOptions common;
  std::string modes = "dense,naive,hybrid,mmap";
  std::string text_file;
  int prompt_tokens = 128;
  int generate_tokens = 256;
  std::string json_path;
};

struct ModeResult {
  std::string mode;
  std::string sparse_reads;  // sparse modes: planned or streamed
  double ms_io = 0, ms_mem = 0, ms_compute = 0, ms_total = 0;
  double ms_total_first8 = 0;
  double bytes_read_per_token = 0;
  double read_mib_per_s = 0;
  double read_requests_per_token = 0;  // after coalescing: what the device is asked for
  double prefill_ms = 0;
  double agreement_with_dense = -1;  // fraction of generated tokens equal to dense's
  double ms_select = 0;              // predictor (or oracle) time, part of compute
  double neurons_loaded_per_token = 0;
  double cache_hit_rate = -1;
  double predictor_recall = -1, predictor_precision = -1;  // sparse mode, measured online
  uint64_t rss_bytes = 0;
  std::vector<int32_t> tokens;
};

uint64_t current_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

uint64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<uint64_t>(usage.ru_maxrss) * 1024;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// The predictor's recall and precision against the true active neurons, on the same decode
// steps (teacher-forced), in a second untimed run: the oracle it needs is a dense copy of the
// FFN, which would distort the timed run's figures.
void measure_predictor(const Model& model, EngineOptions options,
                       const std::vector<int32_t>& prompt, ModeResult& r) {
  options.measure_predictor = true;
  options.compute_read = false;  // streamed reads consult the predictor only then
  Engine engine(model, options);
  Transformer& tr = engine.transformer();
  tr.forward(prompt);
  for (size_t i = 0; i + 1 < r.tokens.size(); ++i) tr.forward(std::span(&r.tokens[i], 1));
  if (const PredictorQuality* q = engine.predictor_quality()) {
    r.predictor_recall = q->recall();
    r.predictor_precision = q->precision();
  }
}

ModeResult bench_mode(const Model& model, const BenchOptions& o, const std::string& mode,
                      const std::vector<int32_t>& prompt) {
  using Clock = std::chrono::steady_clock;
  EngineOptions options = o.common.engine_options();
  options.mode = mode;
  // Dense is the reference with everything in DRAM: the budget does not apply to it.
  if (mode == "dense") options.mem_budget.clear();
  Engine engine(model, options);
  if (engine.plan()) std::fprintf(stderr, "%s\n", engine.plan()->describe().c_str());
  Transformer& tr = engine.transformer();
  Sampler greedy({.temperature = 0});

  ModeResult r;
  r.mode = mode;
  auto start = Clock::now();
  std::span<const float> logits = tr.forward(prompt);
  r.prefill_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  engine.reset_stats();
  double total_ms = 0, first8_ms = 0;
  for (int i = 0; i < o.generate_tokens; ++i) {
    const int32_t token = greedy.sample(logits);
    r.tokens.push_back(token);
    start = Clock::now();
    logits = tr.forward(std::span(&token, 1));
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    total_ms += ms;
    if (i < 8) first8_ms += ms;
  }
  const double n = o.generate_tokens;
  r.ms_total = total_ms / n;
  r.ms_total_first8 = first8_ms / std::min(8, o.generate_tokens);
  if (const FlashStats* flash = engine.flash_stats()) {
    const FlashStats& s = *flash;
    r.ms_io = s.io_seconds * 1e3 / n;
    r.ms_mem = s.memory_seconds * 1e3 / n;
    r.bytes_read_per_token = static_cast<double>(s.bytes_read) / n;
    r.read_mib_per_s = s.io_seconds > 0 ? s.bytes_read / 1048576.0 / s.io_seconds : 0;
    r.read_requests_per_token = static_cast<double>(s.read_requests) / n;
  }
  if (const SparseStats* sparse = engine.sparse_stats()) {
    r.sparse_reads = sparse_reads_name(engine.plan()->sparse_reads);
    r.ms_select = sparse->select_seconds * 1e3 / n;
    r.neurons_loaded_per_token = static_cast<double>(sparse->neurons_loaded) / n;
    r.cache_hit_rate = sparse->neurons_active > 0
                           ? static_cast<double>(sparse->cache_hits) / sparse->neurons_active
                           : 0;
  }
  r.ms_compute = r.ms_total - r.ms_io - r.ms_mem;
  r.rss_bytes = current_rss_bytes();
  if (mode == "sparse") measure_predictor(model, options, prompt, r);
  return r;
}

void bench(const BenchOptions& o) {
  auto model = Model::load(o.common.model_path);
  std::string text =
      "It is a truth universally acknowledged, that a single man in possession of a good "
      "fortune, must be in want of a wife.";
  if (!o.text_file.empty()) text = read_text_file(o.text_file, "text file");
  std::vector<int32_t> prompt = model->tokenizer.encode(text, model->tokenizer.add_bos(), false);
  if (static_cast<int>(prompt.size()) < o.prompt_tokens) {
    fail("the text gives only {} tokens, fewer than the {} prompt tokens asked for; pass a longer "
         "-f file",
         prompt.size(), o.prompt_tokens);
  }
  prompt.resize(o.prompt_tokens);

  std::vector<ModeResult> results;
  for (const std::string& mode : split(o.modes)) {
    std::fprintf(stderr, "bench: %s mode ...\n", mode.c_str());
    results.push_back(bench_mode(*model, o, mode, prompt));
  }
  const ModeResult* dense = nullptr;
  for (const ModeResult& r : results) {
    if (r.mode == "dense") dense = &r;
  }
  for (ModeResult& r : results) {
    if (!dense) break;
    size_t same = 0;
    for (size_t i = 0; i < r.tokens.size(); ++i) same += r.tokens[i] == dense->tokens[i];
    r.agreement_with_dense = static_cast<double>(same) / r.tokens.size();
  }

  std::printf("\n%s, prompt %d tokens, %d generated (greedy), %d threads\n",
              model->config.name.c_str(), o.prompt_tokens, o.generate_tokens,
              o.common.engine_options().threads > 0 ? o.common.engine_options().threads
                                                   : ThreadPool::default_threads());
  std::printf("| mode | I/O ms | mem ms | compute ms (select) | total ms/token | first 8 ms | "
              "MiB read/token | read MiB/s | neurons loaded/token | cache hits | prefill ms | "
              "same tokens as dense | RSS MiB |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const ModeResult& r : results) {
    const std::string same =
        r.agreement_with_dense < 0 ? "-" : fmt::format("{:.1f}%", 100 * r.agreement_with_dense);
    const std::string hits =
        r.cache_hit_rate < 0 ? "-" : fmt::format("{:.1f}%", 100 * r.cache_hit_rate);
    std::printf(
        "| %s | %.2f | %.2f | %.2f (%.2f) | %.2f | %.2f | %.2f | %.0f | %.0f | %s | %.1f | %s | "
        "%.0f |\n",
        (r.sparse_reads.empty() ? r.mode : r.mode + " (" + r.sparse_reads + ")").c_str(),
        r.ms_io, r.ms_mem, r.ms_compute, r.ms_select, r.ms_total,
        r.ms_total_first8, r.bytes_read_per_token / 1048576.0, r.read_mib_per_s,
        r.neurons_loaded_per_token, hits.c_str(), r.prefill_ms, same.c_str(),
        r.rss_bytes / 1048576.0);
  }
  for (const ModeResult& r : results) {
    if (r.read_requests_per_token <= 0) continue;
    std::printf("%s: %.0f reads per token, %.0f KiB each on average (compare with `flashlm probe` "
                "at that size)\n",
                r.mode.c_str(), r.read_requests_per_token,
                r.bytes_read_per_token / r.read_requests_per_token / 1024);
  }
  for (const ModeResult& r : results) {
    if (r.predictor_recall < 0) continue;
    std::printf("%s: predictor recall %.1f%%, precision %.1f%% (per decode token and layer, "
                "against the true active neurons)\n",
                r.mode.c_str(), 100 * r.predictor_recall, 100 * r.predictor_precision);
  }
  std::printf("peak RSS of the process: %.0f MiB\n", peak_rss_bytes() / 1048576.0);

  if (!o.json_path.empty()) {
    nlohmann::json out = nlohmann::json::array();
    for (const ModeResult& r : results) {
      out.push_back({{"mode", r.mode},
                     {"sparse_reads", r.sparse_reads},
                     {"ms_io", r.ms_io},
                     {"ms_mem", r.ms_mem},
                     {"ms_compute", r.ms_compute},
                     {"ms_total", r.ms_total},
                     {"ms_total_first8", r.ms_total_first8},
                     {"bytes_read_per_token", r.bytes_read_per_token},
                     {"read_mib_per_s", r.read_mib_per_s},
                     {"read_requests_per_token", r.read_requests_per_token},
                     {"prefill_ms", r.prefill_ms},
                     {"agreement_with_dense", r.agreement_with_dense},
                     {"rss_bytes", r.rss_bytes},
                     {"ms_select", r.ms_select},
                     {"neurons_loaded_per_token", r.neurons_loaded_per_token},
                     {"cache_hit_rate", r.cache_hit_rate},
                     {"predictor_recall", r.predictor_recall},
                     {"predictor_precision", r.predictor_precision},
                     {"tokens", r.tokens}});
    }
    std::ofstream f(o.json_path);
    f << out.dump(2) << "\n";
    if (!f) fail("cannot write '{}'", o.json_path);
  }
}

}  // namespace

void register_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Per-token I/O / memory / compute breakdown of each FFN mode (the paper's workload)");
  o->common.add_model(*cmd);
  o->common.add_threads(*cmd);
  o->common.add_context(*cmd, 1024);
  o->common.add_flash(*cmd);
  cmd->add_option("--modes", o->modes, "Comma-separated modes to run, in order")
      ->capture_default_str();
  cmd->add_option("-f,--file", o->text_file, "Text whose first tokens form the prompt")
      ->check(CLI::ExistingFile);
  cmd->add_option("-p,--n-prompt", o->prompt_tokens, "Prompt tokens")
      ->check(CLI::Range(1, 8192))
      ->capture_default_str();
  cmd->add_option("-n,--n-gen", o->generate_tokens, "Generated tokens")
      ->check(CLI::Range(1, 8192))
      ->capture_default_str();
  cmd->add_option("--json", o->json_path, "Also write the results as JSON to this file");
  cmd->callback([o] { bench(*o); });
}

}  // namespace flashlm
