// `flashlm convert` and `flashlm verify`: write and check the flash layout (.flm).
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/progress.h"
#include "common/error.h"
#include "common/text_file.h"
#include "flash/flash_layout.h"
#include "flash/loaded_model.h"
#include "sparse/calibrate.h"

namespace flashlm {
namespace {

// `--neuron-order importance`: converts in natural order to a temporary file beside the output,
// runs it over the calibration text to rank each layer's neurons, and removes it.
NeuronImportance rank_for_conversion(const std::string& input, const std::string& output,
                                     const ConvertOptions& natural, const std::string& text,
                                     const CalibrationOptions& calibration) {
  const std::string temp = output + ".natural-" + std::to_string(::getpid()) + ".flm";
  try {
    ProgressBar convert_bar("converting (natural order, to rank neurons)");
    ConvertOptions options = natural;
    options.force = true;
    options.progress = [&](int done, int total) { convert_bar.update(done, total); };
    convert_to_flm(input, temp, options);
    auto model = Model::load(temp);
    ProgressBar rank_bar("ranking neurons");
    NeuronImportance ranked =
        rank_neurons_by_importance(*model, text, calibration,
                                   [&](int done, int total) { rank_bar.update(done, total); });
    model.reset();
    std::filesystem::remove(temp);
    return ranked;
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(temp, ec);
    throw;
  }
}

}  // namespace

void register_convert_command(CLI::App& app) {
  struct Options {
    std::string input, output, bundle_type = "source", down_type, neuron_order = "natural",
                                                                   calibration;
    CalibrationOptions ranking{.max_tokens = 1024};
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "Rewrite a GGUF model for streaming: resident part + bundled FFN neurons (.flm)");
  cmd->add_option("-m,--model", o->input, "Input model (.gguf)")->required();
  cmd->add_option("-o,--output", o->output, "Output file (.flm)")->required();
  cmd->add_option("--bundle-type", o->bundle_type,
                  "How bundles store weights: 'source' keeps the GGUF's gate/up quantization and "
                  "stores down columns as Q8_0 (smallest, closest to the GGUF); 'q8_0' stores all "
                  "as Q8_0 (~1.06 bytes/weight); 'f16' stores all as F16 (2 bytes/weight, exact "
                  "for F16/BF16 models)")
      ->check(CLI::IsMember({"source", "q8_0", "f16"}))
      ->capture_default_str();
  cmd->add_option("--down-type", o->down_type,
                  "How down columns are stored, with any --bundle-type: q8_0 (default; f16 with "
                  "--bundle-type f16), q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0 or f16. Fewer "
                  "bits read fewer bytes per token and cost some precision (README: \"Smaller "
                  "down columns\"); the K types need d_model to be a multiple of 256, the others "
                  "of 32");
  cmd->add_option("--neuron-order", o->neuron_order,
                  "How each layer's neurons are ordered in the file: 'natural' (as in the GGUF) "
                  "or 'importance' (largest mean |activation| x |down column| on the "
                  "--calibration text first). The engine keeps each layer's first neurons "
                  "resident; the order does not change what the model computes")
      ->check(CLI::IsMember({"natural", "importance"}))
      ->capture_default_str();
  cmd->add_option("-f,--calibration", o->calibration,
                  "Calibration text for --neuron-order importance (keep it apart from "
                  "evaluation text)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--calibration-tokens", o->ranking.max_tokens,
                  "Calibration tokens --neuron-order importance runs")
      ->check(CLI::Range(o->ranking.segment_tokens, 1 << 24))
      ->capture_default_str();
  cmd->add_option("-t,--threads", o->ranking.threads,
                  "Worker threads for --neuron-order importance (default: all cores)");
  cmd->add_flag("--force", o->force, "Overwrite the output if it exists");
  cmd->callback([o] {
    const bool by_importance = o->neuron_order == "importance";
    if (by_importance && o->calibration.empty()) {
      fail("--neuron-order importance ranks neurons on calibration text; pass it with "
           "-f/--calibration FILE");
    }
    if (!by_importance && !o->calibration.empty()) {
      fail("-f/--calibration is for --neuron-order importance; pass that too, or leave it out");
    }
    if (std::filesystem::exists(o->output) && !o->force) {
      fail("'{}' already exists; pass --force to overwrite it", o->output);
    }
    ConvertOptions options{.bundle_type = parse_bundle_type(o->bundle_type), .force = o->force};
    if (!o->down_type.empty()) options.down_type = parse_down_type(o->down_type);
    if (by_importance) {
      const std::string text = read_text_file(o->calibration, "calibration text");
      const NeuronImportance ranked =
          rank_for_conversion(o->input, o->output, options, text, o->ranking);
      options.neuron_order = ranked.order;
      options.neuron_order_name = "importance";
      std::printf("neurons ordered by importance on %lld calibration tokens: the first 25%% of "
                  "each layer carry %.1f%% of the summed importance, the first 50%% %.1f%%\n",
                  static_cast<long long>(ranked.tokens), 100 * ranked.share_of_first(0.25),
                  100 * ranked.share_of_first(0.5));
      std::fflush(stdout);
    }
    ProgressBar bar("converting");
    options.progress = [&](int done, int total) { bar.update(done, total); };
    convert_to_flm(o->input, o->output, options);
    auto flm = FlashModelFile::open(o->output);
    std::printf("wrote %s: %zu layers x %d bundles of %s; bundle region %.1f MiB; neurons in %s "
                "order\n",
                o->output.c_str(), flm->layers().size(), flm->d_ff(),
                flm->layout().describe().c_str(), flm->bundle_region_bytes() / 1048576.0,
                flm->neuron_order().c_str());
  });
}

void register_verify_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("verify", "Check every layer checksum of a .flm file");
  cmd->add_option("-m,--model,model", *path, "Model file (.flm)")->required();
  cmd->callback([path] {
    auto flm = FlashModelFile::open(*path);
    ProgressBar bar("verifying");
    flm->verify([&](int done, int total) { bar.update(done, total); });
    std::printf("%s: all %zu layer checksums match; bundles of %s\n", path->c_str(),
                flm->layers().size(), flm->layout().describe().c_str());
  });
}

}  // namespace flashlm
