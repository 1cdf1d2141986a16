// `flashlm bench`: the paper's per-token breakdown (I/O, memory management, compute) for each
// FFN mode on the standard decode workload: a 128-token prompt from real text, then 256
// greedy tokens, batch 1. Modes run one after another, side by side; under a --mem-budget
// each runs in a child process inside a cgroup memory limit equal to the budget (page cache
// dropped before), so its figures are what a machine of that size gets.

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "common/error.h"
#include "common/memory_cgroup.h"
#include "common/process_memory.h"
#include "common/text_file.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "engine/generate.h"
#include "speculative/self_drafter.h"
#include "flash/flash_layout.h"
#include "gguf/gguf.h"
#include "quant/kernels.h"
#include "sampling/sampler.h"

namespace flashlm {
namespace {

struct BenchOptions {
  CommonOptions common;
  std::string modes;  // empty: every mode the model can run (a GGUF: dense only)
  std::string text_file;
  int prompt_tokens = 128;
  int generate_tokens = 256;
  std::string json_path;
  std::string cgroup = "auto";  // auto: a cgroup at the budget where one can be made; on; off
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
  uint64_t rss_bytes = 0;        // at the end of the run
  uint64_t rss_after_first8 = 0;  // after the first 8 generated tokens: RSS must stay flat
  uint64_t peak_rss_bytes = 0;
  uint64_t plan_total_bytes = 0;  // what the memory plan said the process would hold
  uint64_t budget_bytes = 0;      // 0: no budget
  // Inside a cgroup: its limit (0: none), peak usage (page cache included), times the limit
  // was met, and whether the kernel killed the run for it.
  uint64_t cgroup_limit = 0, cgroup_peak = 0, cgroup_limit_hits = 0, cgroup_refaults = 0;
  bool killed = false;
  // Speculative decoding (--draft): generated tokens per target forward pass, the share of
  // drafted tokens accepted, and per generated token the time drafting and verifying.
  std::string draft = "none";
  double tokens_per_pass = 1, draft_acceptance = 0, ms_draft = 0, ms_verify = 0;
  std::string model_name;
  std::vector<int32_t> tokens;
};

void to_json(nlohmann::json& j, const ModeResult& r) {
  j = {{"mode", r.mode},
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
       {"ms_select", r.ms_select},
       {"neurons_loaded_per_token", r.neurons_loaded_per_token},
       {"cache_hit_rate", r.cache_hit_rate},
       {"predictor_recall", r.predictor_recall},
       {"predictor_precision", r.predictor_precision},
       {"rss_bytes", r.rss_bytes},
       {"rss_after_first8_bytes", r.rss_after_first8},
       {"peak_rss_bytes", r.peak_rss_bytes},
       {"plan_total_bytes", r.plan_total_bytes},
       {"budget_bytes", r.budget_bytes},
       {"cgroup_limit_bytes", r.cgroup_limit},
       {"cgroup_peak_bytes", r.cgroup_peak},
       {"cgroup_limit_hits", r.cgroup_limit_hits},
       {"cgroup_refaults", r.cgroup_refaults},
       {"killed", r.killed},
       {"draft", r.draft},
       {"tokens_per_pass", r.tokens_per_pass},
       {"draft_acceptance", r.draft_acceptance},
       {"ms_draft", r.ms_draft},
       {"ms_verify", r.ms_verify},
       {"model", r.model_name},
       {"tokens", r.tokens}};
}

void from_json(const nlohmann::json& j, ModeResult& r) {
  r.mode = j.at("mode");
  r.sparse_reads = j.at("sparse_reads");
  r.ms_io = j.at("ms_io");
  r.ms_mem = j.at("ms_mem");
  r.ms_compute = j.at("ms_compute");
  r.ms_total = j.at("ms_total");
  r.ms_total_first8 = j.at("ms_total_first8");
  r.bytes_read_per_token = j.at("bytes_read_per_token");
  r.read_mib_per_s = j.at("read_mib_per_s");
  r.read_requests_per_token = j.at("read_requests_per_token");
  r.prefill_ms = j.at("prefill_ms");
  r.ms_select = j.at("ms_select");
  r.neurons_loaded_per_token = j.at("neurons_loaded_per_token");
  r.cache_hit_rate = j.at("cache_hit_rate");
  r.predictor_recall = j.at("predictor_recall");
  r.predictor_precision = j.at("predictor_precision");
  r.rss_bytes = j.at("rss_bytes");
  r.rss_after_first8 = j.at("rss_after_first8_bytes");
  r.peak_rss_bytes = j.at("peak_rss_bytes");
  r.plan_total_bytes = j.at("plan_total_bytes");
  r.budget_bytes = j.at("budget_bytes");
  r.draft = j.at("draft");
  r.tokens_per_pass = j.at("tokens_per_pass");
  r.draft_acceptance = j.at("draft_acceptance");
  r.ms_draft = j.at("ms_draft");
  r.ms_verify = j.at("ms_verify");
  r.model_name = j.at("model");
  r.tokens = j.at("tokens").get<std::vector<int32_t>>();
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

// The prompt: the first prompt_tokens tokens of -f (or of a built-in sentence, repeated).
std::vector<int32_t> bench_prompt(const Model& model, const BenchOptions& o) {
  std::string text;
  if (!o.text_file.empty()) {
    text = read_text_file(o.text_file, "text file");
  } else {
    const std::string sentence =
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife. ";
    for (int i = 0; i < o.prompt_tokens / 8 + 1; ++i) text += sentence;
  }
  std::vector<int32_t> prompt = model.tokenizer.encode(text, model.tokenizer.add_bos(), false);
  if (static_cast<int>(prompt.size()) < o.prompt_tokens) {
    fail("{} gives only {} tokens, fewer than the {} prompt tokens asked for; pass a longer "
         "-f file or a smaller -p",
         o.text_file, prompt.size(), o.prompt_tokens);
  }
  prompt.resize(o.prompt_tokens);
  return prompt;
}

// One mode's timed run. `on_plan` sees the plan before the engine allocates anything (a run
// inside a cgroup sets the limit to the budget there).
ModeResult bench_mode(const BenchOptions& o, const std::string& mode,
                      const std::function<void(const MemoryPlan&)>& on_plan) {
  using Clock = std::chrono::steady_clock;
  auto model = Model::load(o.common.model_path);
  const std::vector<int32_t> prompt = bench_prompt(*model, o);
  // Dense, the reference, decodes plainly: "same tokens as dense" then checks that speculative
  // decoding in the other modes gives what plain decoding gives.
  std::unique_ptr<Model> draft_model =
      mode == "dense" ? nullptr : o.common.load_draft_model(*model);
  EngineOptions options = o.common.engine_options(draft_model.get());
  options.mode = mode;
  // Dense is the reference with everything in DRAM: the budget does not apply to it.
  if (mode == "dense") options.mem_budget.clear();
  on_plan(plan_engine_memory(*model, options));
  Engine engine(*model, options);
  std::fprintf(stderr, "%s\n", engine.plan()->describe().c_str());
  Transformer& tr = engine.transformer();
  Sampler greedy({.temperature = 0});

  ModeResult r;
  r.mode = mode;
  r.model_name = model->config.name;
  r.plan_total_bytes = engine.plan()->total_bytes();
  r.budget_bytes = engine.plan()->budget_given ? engine.plan()->budget : 0;
  // A mode with no resident part of its own (naive, mmap) cannot draft for itself: it decodes
  // plainly, and says so.
  const bool self_refused =
      o.common.draft == "self" && !self_draft_refusal(tr).empty() && mode != "dense";
  if (self_refused) {
    std::fprintf(stderr, "%s: decoding without drafts: %s\n", mode.c_str(),
                 self_draft_refusal(tr).c_str());
  }
  const std::unique_ptr<Drafter> drafter =
      mode == "dense" || self_refused ? nullptr
                                      : o.common.build_drafter(engine, std::move(draft_model));
  // The prompt, for the target and (a draft model) for the drafter.
  auto start = Clock::now();
  std::span<const float> logits = tr.forward(prompt);
  if (drafter) drafter->prefill(prompt);
  r.prefill_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  engine.reset_stats();
  double total_ms = 0, first8_ms = 0;
  if (drafter) {
    // Speculative decoding through the generation loop the commands use; its first token
    // comes from the prompt's logits, which are processed again here (one untimed step).
    r.draft = drafter->name();
    tr.truncate(static_cast<int>(prompt.size()) - 1);
    start = Clock::now();
    const GenerationStats g = generate(
        tr, greedy, model->tokenizer, std::span(prompt).last(1), o.generate_tokens,
        [&](int32_t token) {
          r.tokens.push_back(token);
          if (r.tokens.size() == std::min<size_t>(8, o.generate_tokens)) {
            first8_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
            r.rss_after_first8 = resident_set_bytes();
          }
          return true;
        },
        {}, {.drafter = drafter.get(), .max_tokens = o.common.draft_max,
             .history = std::span(prompt).first(prompt.size() - 1),
             .stop_at_end_of_generation = false});
    total_ms = g.decode_seconds * 1e3 + g.prompt_seconds * 1e3;
    r.tokens_per_pass = static_cast<double>(g.generated_tokens) / (g.decode_passes + 1);
    r.draft_acceptance = g.draft_acceptance();
    r.ms_draft = g.draft_seconds * 1e3 / o.generate_tokens;
    r.ms_verify = (g.verify_seconds + g.prompt_seconds) * 1e3 / o.generate_tokens;
  }
  for (int i = 0; !drafter && i < o.generate_tokens; ++i) {
    const int32_t token = greedy.sample(logits);
    r.tokens.push_back(token);
    start = Clock::now();
    logits = tr.forward(std::span(&token, 1));
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    total_ms += ms;
    if (i < 8) first8_ms += ms;
    if (i == std::min(8, o.generate_tokens) - 1) r.rss_after_first8 = resident_set_bytes();
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
  if (const StreamedWeightStats* w = engine.weight_stream_stats()) {
    // Attention and output-head reads, when the budget leaves them on flash.
    r.ms_io += w->io_seconds * 1e3 / n;
    r.bytes_read_per_token += static_cast<double>(w->bytes_read) / n;
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
  r.rss_bytes = resident_set_bytes();
  r.peak_rss_bytes = peak_resident_set_bytes();
  return r;
}

// The predictor's recall and precision, when sparse mode has one for this level: an untimed
// run with a dense copy of the FFN beside it (outside any budget: a measuring instrument).
void measure_predictor_quality(const BenchOptions& o, ModeResult& r) {
  if (r.mode != "sparse" || o.common.engine.sparsity <= 0) return;
  auto model = Model::load(o.common.model_path);
  EngineOptions options = o.common.engine_options();
  options.mode = r.mode;
  options.mem_budget.clear();
  try {
    measure_predictor(*model, options, bench_prompt(*model, o), r);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench: predictor quality not measured: %s\n", e.what());
  }
}

void bench(const BenchOptions& o) {
  const bool budget = !o.common.engine.mem_budget.empty();
  if (o.cgroup == "on" && !budget) fail("--cgroup on needs a --mem-budget to set the limit to");
  std::string why_not = "no --mem-budget";
  const bool limited = [&] {
    if (o.cgroup == "off" || !budget) return false;
    auto probe = MemoryCgroup::create(fmt::format("flashlm-bench-{}", getpid()), why_not);
    if (!probe && o.cgroup == "on") fail("--cgroup on: {}", why_not);
    return probe != nullptr;
  }();
  if (!limited && budget) {
    std::fprintf(stderr, "bench: modes run without a memory limit (%s): figures are not what a "
                 "machine of the budget's size gets\n", why_not.c_str());
  }
  std::vector<std::string> files = {o.common.model_path};
  files.push_back(o.common.engine.sparse_file.empty() ? o.common.model_path + ".sparse"
                                                      : o.common.engine.sparse_file);

  std::string modes = o.modes;
  if (modes.empty()) {
    // The flash modes need a .flm; a GGUF runs dense only (convert it for the others).
    const bool flm = FlashModelFile::is_flm(*GgufFile::open(o.common.model_path));
    modes = flm ? "dense,naive,hybrid,mmap,sparse" : "dense";
    if (!flm) {
      std::fprintf(stderr, "bench: %s is a GGUF model: dense mode only (flashlm convert makes a "
                   ".flm for the flash modes)\n", o.common.model_path.c_str());
    }
  }
  std::vector<ModeResult> results;
  for (const std::string& mode : split(modes)) {
    std::fprintf(stderr, "bench: %s mode ...\n", mode.c_str());
    if (!limited) {
      results.push_back(bench_mode(o, mode, [](const MemoryPlan&) {}));
      measure_predictor_quality(o, results.back());
      continue;
    }
    // A fresh child per mode, cold page cache, inside a group whose limit the child sets to
    // the plan's budget before the engine allocates (dense: no limit, peak recorded).
    drop_page_cache(files);
    std::string ignored;
    auto group = MemoryCgroup::create(fmt::format("flashlm-bench-{}-{}", getpid(), mode), ignored);
    if (!group) fail("cannot make a cgroup for {} mode: {}", mode, ignored);
    const LimitedRun run = run_in_cgroup(*group, [&](const auto& write_result) {
      ModeResult r = bench_mode(o, mode, [&](const MemoryPlan& plan) {
        if (plan.budget_given) group->set_limit(plan.budget);
      });
      write_result(nlohmann::json(r).dump());
      return 0;
    });
    ModeResult r;
    if (run.exit_code == 0 && !run.output.empty()) {
      r = nlohmann::json::parse(run.output).get<ModeResult>();
    } else {
      r.mode = mode;
      r.killed = run.killed_by_limit();
      std::fprintf(stderr, "bench: %s mode %s\n", mode.c_str(),
                   r.killed ? "was killed by the memory limit"
                            : fmt::format("failed (exit {}, signal {})", run.exit_code,
                                          run.signal).c_str());
    }
    r.cgroup_limit = group->limit_bytes();
    r.cgroup_peak = run.peak_bytes;
    r.cgroup_limit_hits = run.limit_hits;
    r.cgroup_refaults = run.refaults;
    if (!r.killed) measure_predictor_quality(o, r);
    results.push_back(std::move(r));
  }
  const ModeResult* dense = nullptr;
  for (const ModeResult& r : results) {
    if (r.mode == "dense") dense = &r;
  }
  for (ModeResult& r : results) {
    if (!dense || dense->tokens.empty() || r.tokens.size() != dense->tokens.size()) continue;
    size_t same = 0;
    for (size_t i = 0; i < r.tokens.size(); ++i) same += r.tokens[i] == dense->tokens[i];
    r.agreement_with_dense = static_cast<double>(same) / r.tokens.size();
  }

  std::string name;
  for (const ModeResult& r : results) {
    if (!r.model_name.empty()) name = r.model_name;
  }
  std::printf("\n%s, prompt %d tokens, %d generated (greedy), %d threads, %s kernels%s\n",
              name.c_str(), o.prompt_tokens, o.generate_tokens,
              o.common.engine_options().threads > 0 ? o.common.engine_options().threads
                                                   : ThreadPool::default_threads(),
              kernel_target().c_str(),
              limited ? ", each mode in a cgroup memory limit at the budget (dense: no limit), "
                        "page cache dropped before"
                      : "");
  std::printf("| mode | I/O ms | mem ms | compute ms (select) | total ms/token | first 8 ms | "
              "MiB read/token | read MiB/s | neurons loaded/token | cache hits | prefill ms | "
              "same tokens as dense | plan MiB | peak MiB | limit MiB | limit hits | refaults |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const auto mib = [](uint64_t bytes) { return bytes / 1048576.0; };
  for (const ModeResult& r : results) {
    const std::string label =
        r.sparse_reads.empty() ? r.mode : r.mode + " (" + r.sparse_reads + ")";
    if (r.tokens.empty()) {
      std::printf("| %s | %s |\n", label.c_str(),
                  r.killed ? "killed by the memory limit" : "failed (see above)");
      continue;
    }
    const std::string same =
        r.agreement_with_dense < 0 ? "-" : fmt::format("{:.1f}%", 100 * r.agreement_with_dense);
    const std::string hits =
        r.cache_hit_rate < 0 ? "-" : fmt::format("{:.1f}%", 100 * r.cache_hit_rate);
    // Peak: the cgroup's (page cache included) where there was one, else the process's RSS.
    const uint64_t peak = limited ? r.cgroup_peak : r.peak_rss_bytes;
    const std::string limit = r.cgroup_limit ? fmt::format("{:.0f}", mib(r.cgroup_limit)) : "-";
    std::printf(
        "| %s | %.2f | %.2f | %.2f (%.2f) | %.2f | %.2f | %.2f | %.0f | %.0f | %s | %.1f | %s | "
        "%.1f | %.1f | %s | %s | %s |\n",
        label.c_str(), r.ms_io, r.ms_mem, r.ms_compute, r.ms_select, r.ms_total,
        r.ms_total_first8, r.bytes_read_per_token / 1048576.0, r.read_mib_per_s,
        r.neurons_loaded_per_token, hits.c_str(), r.prefill_ms, same.c_str(),
        mib(r.plan_total_bytes), mib(peak), limit.c_str(),
        limited ? std::to_string(r.cgroup_limit_hits).c_str() : "-",
        limited ? std::to_string(r.cgroup_refaults).c_str() : "-");
  }
  for (const ModeResult& r : results) {
    if (r.draft == "none" || r.tokens.empty()) continue;
    std::printf("%s: draft %s, %.2f tokens per pass, acceptance %.1f%%, draft %.2f ms and "
                "verify %.2f ms per token\n",
                r.mode.c_str(), r.draft.c_str(), r.tokens_per_pass, 100 * r.draft_acceptance,
                r.ms_draft, r.ms_verify);
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
  for (const ModeResult& r : results) {
    if (r.tokens.empty()) continue;
    std::printf("%s: RSS %.1f MiB after 8 tokens, %.1f MiB after %d; peak RSS %.1f MiB\n",
                r.mode.c_str(), mib(r.rss_after_first8), mib(r.rss_bytes), o.generate_tokens,
                mib(r.peak_rss_bytes));
  }

  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    f << nlohmann::json(results).dump(2) << "\n";
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
  o->common.add_lora(*cmd);
  o->common.add_draft(*cmd);
  cmd->add_option("--modes", o->modes,
                  "Comma-separated modes to run, in order (default: dense,naive,hybrid,mmap,sparse "
                  "for a .flm model, dense for a GGUF)");
  cmd->add_option("-f,--file", o->text_file, "Text whose first tokens form the prompt")
      ->check(CLI::ExistingFile);
  cmd->add_option("-p,--n-prompt", o->prompt_tokens, "Prompt tokens")
      ->check(CLI::Range(1, 8192))
      ->capture_default_str();
  cmd->add_option("-n,--n-gen", o->generate_tokens, "Generated tokens")
      ->check(CLI::Range(1, 8192))
      ->capture_default_str();
  cmd->add_option("--json", o->json_path, "Also write the results as JSON to this file");
  cmd->add_option("--cgroup", o->cgroup,
                  "Run each mode in a child process inside a cgroup v1 memory limit equal to the "
                  "budget, page cache dropped before: auto (where one can be made: root), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  cmd->callback([o] { bench(*o); });
}

}  // namespace flashlm
