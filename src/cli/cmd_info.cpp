// `flashlm info`: what a model file holds: metadata, tensors, and bytes by part.
#include <cstdio>
#include <map>

#include "cli/commands.h"
#include "common/error.h"
#include "flash/flash_layout.h"
#include "gguf/gguf.h"
#include "model/config.h"

namespace flashlm {
namespace {

// The parts the flash engine treats differently: the FFN streams, the rest stays resident.
const char* part_of(const std::string& name) {
  if (name.rfind("token_embd", 0) == 0) return "embeddings";
  if (name.rfind("output.", 0) == 0) return "output";
  if (name.find(".ffn_gate") != std::string::npos || name.find(".ffn_up") != std::string::npos ||
      name.find(".ffn_down") != std::string::npos) {
    return "ffn";
  }
  if (name.find(".attn_") != std::string::npos && name.find("norm") == std::string::npos) {
    return "attention";
  }
  return "norms";
}

std::string mib(uint64_t bytes) { return fmt::format("{:.1f} MiB", bytes / 1048576.0); }

void info(const std::string& path, bool show_tensors, bool show_all_metadata) {
  auto file = GgufFile::open(path);
  std::printf("file: %s (GGUF v%u, %s, %zu tensors, %zu metadata entries)\n", path.c_str(),
              file->version(), mib(file->file_size()).c_str(), file->tensors().size(),
              file->metadata().size());
  std::printf("\nmetadata:\n");
  for (const auto& [key, value] : file->metadata()) {
    if (!show_all_metadata && key == "tokenizer.chat_template") {
      std::printf("  %-44s (%zu bytes; --metadata shows it)\n", key.c_str(),
                  std::get<std::string>(value.scalar).size());
      continue;
    }
    std::printf("  %-44s %s\n", key.c_str(), value.to_string(show_all_metadata ? 64 : 4).c_str());
  }
  std::map<std::string, uint64_t> bytes_by_part;
  std::map<std::string, int> tensors_by_type;
  for (const GgufTensor& t : file->tensors()) {
    bytes_by_part[part_of(t.name)] += t.bytes;
    tensors_by_type[type_name(t.type)]++;
  }
  uint64_t total = 0;
  for (const auto& [part, bytes] : bytes_by_part) total += bytes;
  std::printf("\nweights by part:\n");
  for (const auto& [part, bytes] : bytes_by_part) {
    std::printf("  %-12s %12s  %5.1f%%\n", part.c_str(), mib(bytes).c_str(),
                100.0 * bytes / total);
  }
  std::printf("  %-12s %12s\n", "total", mib(total).c_str());
  std::printf("\ntensor types:");
  for (const auto& [type, count] : tensors_by_type) std::printf(" %s x%d", type.c_str(), count);
  std::printf("\n");
  try {
    std::printf("\nmodel: %s\n", ModelConfig::from_gguf(*file).summary().c_str());
  } catch (const Error& e) {
    std::printf("\nmodel: cannot run: %s\n", e.what());
  }
  if (FlashModelFile::is_flm(*file)) {
    try {
      const auto flm = FlashModelFile::from_gguf(*file);
      std::printf("flash layout: %zu layers x %d bundles of %s; bundle region %s; neurons in %s "
                  "order\n",
                  flm->layers().size(), flm->d_ff(), flm->layout().describe().c_str(),
                  mib(flm->bundle_region_bytes()).c_str(), flm->neuron_order().c_str());
    } catch (const Error& e) {
      std::printf("flash layout: cannot read: %s\n", e.what());
    }
  }
  if (show_tensors) {
    std::printf("\ntensors:\n");
    for (const GgufTensor& t : file->tensors()) {
      std::printf("  %-36s %-6s %-20s %10s @ %lu\n", t.name.c_str(), type_name(t.type).c_str(),
                  t.shape_string().c_str(), mib(t.bytes).c_str(),
                  static_cast<unsigned long>(t.offset));
    }
  }
}

}  // namespace

void register_info_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto tensors = std::make_shared<bool>(false);
  auto metadata = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("info", "Show a model's metadata, tensors and size by part");
  cmd->add_option("-m,--model,model", *path, "Model file (.gguf)")->required();
  cmd->add_flag("--tensors", *tensors, "List every tensor");
  cmd->add_flag("--metadata", *metadata, "Show metadata values in full");
  cmd->callback([=] { info(*path, *tensors, *metadata); });
}

}  // namespace flashlm
