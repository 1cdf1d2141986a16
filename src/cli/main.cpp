// flashlm: run language models whose weights live on flash.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/error.h"
#include "common/process_memory.h"
#include "common/thread_pool.h"
#include "quant/kernels.h"
#include "speculative/model_drafter.h"
#include "speculative/self_drafter.h"

namespace flashlm {

void CommonOptions::add_model(CLI::App& cmd) {
  cmd.add_option("-m,--model", model_path, "Model file (.gguf)")
      ->required()
      ->envname("FLASHLM_MODEL");
}

void CommonOptions::add_threads(CLI::App& cmd) {
  cmd.add_option("-t,--threads", engine.threads, "Worker threads (default: all cores)")
      ->check(CLI::NonNegativeNumber)
      ->envname("FLASHLM_THREADS");
}

void CommonOptions::add_context(CLI::App& cmd, int default_size) {
  engine.context_size = default_size;
  cmd.add_option("-c,--ctx-size", engine.context_size, "Context size in tokens (KV cache length)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd.add_option("--cache-type-k", engine.cache_type_k,
                 "KV cache type of the keys (also -ctk): f32, f16 or q8_0 (f16: half of f32's "
                 "memory, q8_0: about a quarter)")
      ->check(CLI::IsMember({"f32", "f16", "q8_0"}))
      ->capture_default_str()
      ->envname("FLASHLM_CACHE_TYPE_K");
  cmd.add_option("--cache-type-v", engine.cache_type_v,
                 "KV cache type of the values (also -ctv): f32, f16 or q8_0")
      ->check(CLI::IsMember({"f32", "f16", "q8_0"}))
      ->capture_default_str()
      ->envname("FLASHLM_CACHE_TYPE_V");
}

void CommonOptions::add_flash(CLI::App& cmd) {
  cmd.add_option("--mode", engine.mode,
                 "Where the FFN comes from: auto (default: dense when --mem-budget holds the whole "
                 "model, else sparse with streamed reads), dense (all in DRAM), naive (every neuron read from "
                 "flash every token), hybrid (part resident, the rest read), mmap (the page cache "
                 "decides), sparse (predicted neurons through a windowed DRAM cache), "
                 "sparse-oracle (the true active neurons; a measuring instrument); all but dense "
                 "need a .flm model (flashlm convert)")
      ->check(CLI::IsMember({"auto", "dense", "naive", "hybrid", "mmap", "sparse", "sparse-oracle"}))
      ->capture_default_str()
      ->envname("FLASHLM_MODE");
  cmd.add_option("--mem-budget", engine.mem_budget,
                 "Memory the whole process may use for the model (weights, KV cache, buffers, "
                 "predictors, the process itself): a size (300M, 1.5G), a percentage of the "
                 "source GGUF's size (50%) or bytes; the plan printed at start shows each part")
      ->envname("FLASHLM_MEM_BUDGET");
  cmd.add_option("--io", io, "Flash read backend: auto, uring (io_uring) or pread (thread pool)")
      ->check(CLI::IsMember({"auto", "uring", "pread"}))
      ->capture_default_str();
  cmd.add_option("--sparsity", engine.sparsity,
                 "Treat this share of FFN neurons as inactive, using the per-layer thresholds of "
                 "`flashlm calibrate` (0 = off; sparse modes need one of the calibrated levels)")
      ->check(CLI::Range(0.0, 0.99))
      ->capture_default_str();
  cmd.add_option("--sparse-file", engine.sparse_file,
                 "Thresholds and predictors from calibrate (default: MODEL.flm.sparse)");
  cmd.add_option("--device-profile", engine.device_profile,
                 "Sparse modes: device profile from `flashlm probe -o FILE` that sets the read "
                 "planner's request size and coalescing gap (default: built-in, measured with fio "
                 "on the project's machines)")
      ->check(CLI::ExistingFile);
  cmd.add_option("--sparse-reads", engine.sparse_reads,
                 "Sparse modes: planned (the paper: predicted neurons not in the windowed cache, "
                 "in coalesced reads), streamed (the first neurons of each layer resident, the "
                 "rest read whole one layer ahead) or auto (streamed when the active neurons' "
                 "reads would cover most of each layer anyway)")
      ->check(CLI::IsMember({"auto", "planned", "streamed"}))
      ->capture_default_str();
  cmd.add_flag("!--no-overlap", engine.overlap_io,
               "Sparse modes: wait for a layer's reads before computing (default: planned reads "
               "run while the cached neurons compute; streamed reads a layer ahead)");
  cmd.add_flag("!--predicted-only", engine.compute_read,
               "Sparse modes: compute only the predicted neurons (default: also every other "
               "neuron whose bundle the layer's reads bring in, since its pages are read anyway)");
  cmd.add_option("--window", engine.window,
                 "Sparse modes: tokens a neuron stays in the DRAM cache after its last use")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
}

void add_sampling_options(CLI::App& cmd, SamplingParams& sampling, bool& seed_given) {
  cmd.add_option("--temp", sampling.temperature, "Temperature; 0 = greedy")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--top-k", sampling.top_k, "Keep the k most likely tokens; 0 = all")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--top-p", sampling.top_p, "Nucleus sampling mass")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd.add_option_function<uint64_t>(
      "-s,--seed",
      [&sampling, &seed_given](uint64_t seed) {
        sampling.seed = seed;
        seed_given = true;
      },
      "Random seed (default: from the clock)");
}

void CommonOptions::add_draft(CLI::App& cmd) {
  cmd.add_option("--draft", draft,
                 "Speculative decoding: ngram (prompt lookup: continue an n-gram already in the "
                 "context; no model), self (the model's own neurons that the budget keeps in "
                 "DRAM: a .flm under --mem-budget; no extra memory), a draft model's GGUF file "
                 "(as -md), or none. Each step "
                 "verifies the draft plus one token in one batched pass (on flash: one read of "
                 "each layer for all of them); the output is the same as without it")
      ->check(CLI::IsMember({"none", "ngram", "self"}) | CLI::ExistingFile)
      ->capture_default_str();
  cmd.add_option("--model-draft", draft_model,
                 "Draft model (also -md) for speculative decoding: a GGUF with the model's "
                 "vocabulary, e.g. a smaller model of its family; runs dense in DRAM, counted in "
                 "--mem-budget")
      ->check(CLI::ExistingFile);
  cmd.add_option("--draft-max", draft_max, "Tokens drafted per step at most")
      ->check(CLI::Range(1, 63))
      ->capture_default_str();
  cmd.add_option("--draft-p-min", draft_p_min,
                 "Draft model or self: stop drafting when the most likely next token has a "
                 "probability below this (default 0.75 for a draft model, 0 for self)")
      ->check(CLI::Range(0.0, 1.0));
  cmd.add_option("--draft-width", draft_width,
                 "--draft self: candidates drafted for the first position: the best one continues "
                 "as a chain, the others are verified beside it in the same pass (a draft tree); "
                 "1 = a chain")
      ->check(CLI::Range(1, 8))
      ->capture_default_str();
  cmd.add_option("--draft-side", draft_side,
                 "--draft self: runners-up drafted at each position after the first, verified "
                 "as leaves beside the chain in the same pass (they cost no draft pass, only "
                 "compute in the verifying one); 0 = none")
      ->check(CLI::Range(0, 4))
      ->capture_default_str();
  cmd.add_option("--draft-vocab", draft_vocab,
                 "--draft self: draft only the token ids below N, whose rows of the output head "
                 "alone are computed in a draft (BPE vocabularies put the most frequent tokens "
                 "first; the head is most of a draft's arithmetic); 0 = all")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

std::string CommonOptions::draft_model_path() const {
  const bool named = draft != "none" && draft != "ngram" && draft != "self";
  if (!draft_model.empty() && (draft == "ngram" || draft == "self")) {
    fail("--draft {} and a draft model (-md {}) were both given: pick one", draft, draft_model);
  }
  if (!draft_model.empty() && named && draft != draft_model) {
    fail("two draft models were given (--draft {} and -md {}): pick one", draft, draft_model);
  }
  return !draft_model.empty() ? draft_model : named ? draft : "";
}

std::unique_ptr<Model> CommonOptions::load_draft_model(const Model& target) const {
  const std::string path = draft_model_path();
  return path.empty() ? nullptr : check_draft_model(Model::load(path), target);
}

std::unique_ptr<Drafter> CommonOptions::build_drafter(Engine& target,
                                                      std::unique_ptr<Model> draft_loaded) const {
  if (draft == "self") {
    return std::make_unique<SelfDrafter>(target.transformer(),
                                         draft_p_min >= 0 ? draft_p_min : 0.0f, draft_vocab,
                                         draft_width, draft_side);
  }
  if (!draft_loaded) return make_drafter(draft);
  return std::make_unique<ModelDrafter>(std::move(draft_loaded), target.model(), target.pool(),
                                        draft_transformer_options(engine_options()),
                                        draft_p_min >= 0 ? draft_p_min : 0.75f);
}

void CommonOptions::add_lora(CLI::App& cmd) {
  cmd.add_option("--lora", lora_files,
                 "LoRA adapter (llama.cpp's GGUF format, e.g. from flashlm finetune) applied "
                 "beside the weights, never merged into them; repeat for several")
      ->check(CLI::ExistingFile);
  cmd.add_option("--lora-scale", lora_scales,
                 "Scale of the adapters: one value for all, or one per --lora in their order "
                 "(default 1)");
}

EngineOptions CommonOptions::engine_options(const Model* draft_model_loaded) const {
  EngineOptions o = engine;
  if (!lora_scales.empty() && lora_files.empty()) {
    fail("--lora-scale was given without --lora: name the adapter with --lora FILE");
  }
  if (lora_scales.size() > 1 && lora_scales.size() != lora_files.size()) {
    fail("{} --lora-scale values for {} --lora adapters: give one scale for all or one per "
         "adapter",
         lora_scales.size(), lora_files.size());
  }
  for (size_t i = 0; i < lora_files.size(); ++i) {
    const float scale = lora_scales.empty() ? 1.0f : lora_scales[lora_scales.size() == 1 ? 0 : i];
    o.lora.push_back({lora_files[i], scale});
  }
  // Verifying a draft reads the logits of every token of the step.
  if (draft != "none" || !draft_model.empty()) {
    o.all_logits = true;
    o.logit_rows = draft_max + 1;
    // --draft self's tree: the runners-up beside the chain, verified in the same pass.
    if (draft == "self") o.logit_rows += (draft_width - 1) + draft_side * (draft_max - 1);
  }
  if (draft_model_loaded) o.draft_model_bytes = draft_model_bytes(*draft_model_loaded, o);
  o.io_backend = io == "uring" ? IoBackend::IoUring : io == "pread" ? IoBackend::Pread : IoBackend::Auto;
  return o;
}

// llama.cpp's flags of several letters after one dash, spelled as their long names: CLI11
// reads "-ctk" as -c with the value "tk".
std::vector<std::string> with_long_names(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  for (std::string& arg : args) {
    if (arg == "-ctk") arg = "--cache-type-k";
    if (arg == "-ctv") arg = "--cache-type-v";
    if (arg == "-np") arg = "--parallel";
    if (arg == "-md") arg = "--model-draft";
  }
  return args;
}

}  // namespace flashlm

int main(int argc, char** argv) {
  flashlm::return_freed_memory_promptly();
  CLI::App app{"flashlm: LLM inference with the weights on flash and a small DRAM budget"};
  app.require_subcommand(1);
  // The version and the kernels Highway's dispatch picks on this CPU (e.g. AVX3_DL, NEON).
  app.set_version_flag("--version", [] {
    return std::string("flashlm 0.1.0, ") + flashlm::kernel_target() + " kernels";
  });
  // register commands here
  flashlm::register_serve_command(app);
  flashlm::register_chat_command(app);
  flashlm::register_run_command(app);
  flashlm::register_finetune_command(app);
  flashlm::register_perplexity_command(app);
  flashlm::register_info_command(app);
  flashlm::register_convert_command(app);
  flashlm::register_verify_command(app);
  flashlm::register_bench_command(app);
  flashlm::register_calibrate_command(app);
  flashlm::register_probe_command(app);
  flashlm::register_train_predictor_command(app);
  try {
    std::vector<std::string> args = flashlm::with_long_names(argc, argv);
    std::vector<char*> arg_pointers;
    for (std::string& arg : args) arg_pointers.push_back(arg.data());
    app.parse(argc, arg_pointers.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const flashlm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory; try a smaller --ctx-size or a smaller model\n");
    return 1;
  } catch (const std::exception& e) {
    // Anything else a library can throw (filesystem, system_error, json): one clear line.
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
