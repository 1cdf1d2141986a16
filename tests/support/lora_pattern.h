// A LoRA adapter with known contents for any model, made the same way here and in
// scripts/reference/make_lora_reference.py (which hands it to llama.cpp): every value is a
// sine or cosine of its indices, computed in double and rounded to float.
#pragma once

#include "lora/lora.h"
#include "model/config.h"

namespace flashlm::testing {

struct LoraPatternSpec {
  int rank = 4;
  float alpha = 8;
  double amplitude = 0.08;
  std::vector<LoraTarget> targets;  // empty: all the model has
};

LoraAdapter lora_pattern(const ModelConfig& config, const LoraPatternSpec& spec = {});

}  // namespace flashlm::testing
