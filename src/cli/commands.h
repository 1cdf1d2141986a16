// Each subcommand of the `flashlm` tool registers itself on the CLI11 app.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "sampling/sampler.h"
#include "speculative/draft.h"

namespace flashlm {

// Options that most commands share, with llama.cpp's flag names.
struct CommonOptions {
  std::string model_path;
  EngineOptions engine;
  std::string io = "auto";
  void add_model(CLI::App& cmd);
  void add_threads(CLI::App& cmd);
  void add_context(CLI::App& cmd, int default_size);
  // --mode, --mem-budget, --io: how the FFN is served (.flm models stream from flash).
  void add_flash(CLI::App& cmd);
  // --draft SOURCE (none, ngram, self, or a draft model's GGUF file), -md/--model-draft MODEL,
  // --draft-max, --draft-p-min: speculative decoding (run, chat, serve, bench).
  std::string draft = "none";
  std::string draft_model;
  int draft_max = 8;
  // Below 0 (not given): 0.75 for a draft model (llama.cpp's default), 0 for self, whose
  // probabilities from a fraction of the FFN understate how often its top token is right.
  float draft_p_min = -1.0f;
  int draft_width = 3;  // --draft self: candidates for the first drafted position (a tree)
  int draft_side = 1;   // --draft self: runners-up at each later position, leaves of the tree
  int draft_vocab = 32768;  // --draft self: the token ids below this are drafted (0: all)
  void add_draft(CLI::App& cmd);
  // The draft model's file (-md, or --draft given a file); empty when none is given.
  std::string draft_model_path() const;
  // The draft model for `target`, loaded and checked (vocabulary) before the engine, so that
  // its plan counts it; null without one.
  std::unique_ptr<Model> load_draft_model(const Model& target) const;
  // The drafter for `engine` (null for --draft none); a draft model runs on the engine's threads.
  std::unique_ptr<Drafter> build_drafter(Engine& target, std::unique_ptr<Model> draft_loaded) const;
  // --lora FILE (repeatable), --lora-scale S (one for all, or one per --lora): adapters applied
  // beside the weights (run, chat, serve, perplexity, bench).
  std::vector<std::string> lora_files;
  std::vector<float> lora_scales;
  void add_lora(CLI::App& cmd);
  // Everything above as the engine's options; throws when the flags contradict each other.
  // A draft model's memory (load_draft_model) counts in the budget.
  EngineOptions engine_options(const Model* draft = nullptr) const;
};

// --temp, --top-k, --top-p and -s/--seed, with llama.cpp's names; `seed_given` records
// whether -s came (otherwise callers seed from the clock).
void add_sampling_options(CLI::App& cmd, SamplingParams& sampling, bool& seed_given);

// calibrate and train-predictor under --mem-budget: the FFN's plan (hybrid: what the budget
// leaves after the resident part, the KV cache, the working buffers and the tool's own
// `sample_bytes`; the rest read from flash), printed; null without a budget.
std::unique_ptr<MemoryPlan> tool_memory_plan(const Model& model, const std::string& budget,
                                             int threads, int segment_tokens,
                                             uint64_t sample_bytes);

void register_run_command(CLI::App& app);
void register_info_command(CLI::App& app);
void register_perplexity_command(CLI::App& app);
void register_convert_command(CLI::App& app);
void register_verify_command(CLI::App& app);
void register_bench_command(CLI::App& app);
void register_calibrate_command(CLI::App& app);
void register_train_predictor_command(CLI::App& app);
void register_serve_command(CLI::App& app);
void register_chat_command(CLI::App& app);
void register_probe_command(CLI::App& app);
void register_finetune_command(CLI::App& app);

}  // namespace flashlm
