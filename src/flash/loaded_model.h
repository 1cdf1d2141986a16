// A loaded model: the GGUF file, its configuration, weight views and tokenizer.
#pragma once

#include <memory>
#include <string>

#include "flash/flash_layout.h"
#include "gguf/gguf.h"
#include "model/config.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace flashlm {

// A .gguf file runs dense from DRAM; a .flm file (see `flashlm convert`) can also stream its
// FFN from flash, and then `flash` describes its bundles.
struct Model {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<FlashModelFile> flash;  // null for a plain GGUF model
  ModelConfig config;
  ModelWeights weights;  // for .flm files without the FFN matrices
  Tokenizer tokenizer;

  static std::unique_ptr<Model> load(const std::string& path);
};

}  // namespace flashlm
