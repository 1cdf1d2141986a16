#include "flash/loaded_model.h"

namespace flashlm {

std::unique_ptr<Model> Model::load(const std::string& path) {
  auto file = GgufFile::open(path);
  std::unique_ptr<FlashModelFile> flash;
  if (FlashModelFile::is_flm(*file)) flash = FlashModelFile::from_gguf(*file);
  ModelConfig config = ModelConfig::from_gguf(*file);
  ModelWeights weights = ModelWeights::from_gguf(*file, config, /*require_ffn=*/!flash);
  Tokenizer tokenizer = Tokenizer::from_gguf(*file);
  return std::unique_ptr<Model>(new Model{std::move(file), std::move(flash), std::move(config),
                                          std::move(weights), std::move(tokenizer)});
}

}  // namespace flashlm
