// `flashlm calibrate`: choose per-layer activation thresholds for target sparsities on
// calibration text and write them to the sparsity file beside the .flm model.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/progress.h"
#include "common/error.h"
#include "common/text_file.h"
#include "flash/loaded_model.h"
#include "gguf/gguf_writer.h"
#include "sparse/calibrate.h"

namespace flashlm {

std::unique_ptr<MemoryPlan> tool_memory_plan(const Model& model, const std::string& budget,
                                             int threads, int segment_tokens,
                                             uint64_t sample_bytes) {
  if (budget.empty()) return nullptr;
  const EngineOptions options{.threads = threads,
                              .context_size = segment_tokens,
                              .max_batch = 32,
                              .mode = "hybrid",
                              .mem_budget = budget,
                              .sample_bytes = sample_bytes};
  auto plan = std::make_unique<MemoryPlan>(plan_engine_memory(model, options));
  std::fprintf(stderr, "%s\n", plan->describe().c_str());
  return plan;
}

void register_calibrate_command(CLI::App& app) {
  struct Options {
    std::string model, text, output, levels = "0.3,0.5,0.7,0.8,0.9", budget;
    CalibrationOptions calibration;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "calibrate", "Choose activation thresholds for target sparsities on calibration text");
  cmd->add_option("-m,--model", o->model, "Model (.flm)")->required();
  cmd->add_option("-f,--file", o->text, "Calibration text (keep it apart from evaluation text)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("-o,--output", o->output, "Sparsity file (default: MODEL.flm.sparse)");
  cmd->add_option("--tokens", o->calibration.max_tokens, "Calibration tokens to run")
      ->check(CLI::Range(64, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--levels", o->levels, "Target sparsities, comma-separated")
      ->capture_default_str();
  cmd->add_option("-t,--threads", o->calibration.threads, "Worker threads (default: all cores)");
  cmd->add_option("--mem-budget", o->budget,
                  "Memory the whole process may use (as for run): the FFN then streams from "
                  "flash (hybrid) around the samples this command keeps")
      ->envname("FLASHLM_MEM_BUDGET");
  cmd->callback([o] {
    const std::string text = read_text_file(o->text, "calibration text");
    o->calibration.levels.clear();
    std::stringstream levels(o->levels);
    for (std::string item; std::getline(levels, item, ',');) {
      try {
        o->calibration.levels.push_back(std::stof(item));
      } catch (const std::exception&) {
        fail("cannot read sparsity level '{}' in --levels", item);
      }
    }
    auto model = Model::load(o->model);
    const auto plan = tool_memory_plan(*model, o->budget, o->calibration.threads,
                                       o->calibration.segment_tokens,
                                       calibration_sample_bytes(model->config, o->calibration));
    o->calibration.ffn_plan = plan.get();
    ProgressBar bar("calibrating");
    const SparsityProfile profile =
        calibrate_thresholds(*model, text, o->calibration,
                             [&](int done, int total) { bar.update(done, total); });
    const std::string output = o->output.empty() ? sparsity_file_for(o->model) : o->output;
    GgufWriter writer;
    writer.add_string("general.architecture", "flashlm-sparsity");
    writer.add_string("flashlm.model", model->config.name);
    writer.add_uint32("flashlm.n_layers", static_cast<uint32_t>(model->config.n_layers));
    profile.write_to(writer);
    writer.write(output);
    std::printf("wrote %s: thresholds for sparsity", output.c_str());
    for (float level : profile.levels) std::printf(" %.2f", level);
    std::printf(" over %d layers\n", model->config.n_layers);
    for (size_t i = 0; i < profile.levels.size(); ++i) {
      std::printf("  %.2f: layer 0 %.4g, layer %d %.4g\n", profile.levels[i],
                  profile.thresholds[i].front(), model->config.n_layers - 1,
                  profile.thresholds[i].back());
    }
  });
}

}  // namespace flashlm
