// `flashlm convert` and `flashlm verify`: write and check the flash layout (.flm).
#include <cstdio>

#include "cli/commands.h"
#include "cli/progress.h"
#include "flash/flash_layout.h"

namespace flashlm {

void register_convert_command(CLI::App& app) {
  struct Options {
    std::string input, output, bundle_type = "source", down_type;
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
  cmd->add_flag("--force", o->force, "Overwrite the output if it exists");
  cmd->callback([o] {
    ProgressBar bar("converting");
    ConvertOptions options{.bundle_type = parse_bundle_type(o->bundle_type),
                           .force = o->force,
                           .progress = [&](int done, int total) { bar.update(done, total); }};
    if (!o->down_type.empty()) options.down_type = parse_down_type(o->down_type);
    convert_to_flm(o->input, o->output, options);
    auto flm = FlashModelFile::open(o->output);
    std::printf("wrote %s: %zu layers x %d bundles of %s; bundle region %.1f MiB\n",
                o->output.c_str(), flm->layers().size(), flm->d_ff(),
                flm->layout().describe().c_str(), flm->bundle_region_bytes() / 1048576.0);
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
