// LoRA fine-tuning: training data (plain text cut into sequences, or JSONL chat samples with
// the loss on the assistant turns only), the adapter's initialization, the loop (AdamW,
// warmup and cosine schedule, gradient accumulation over a batch of sequences) and held-out
// evaluation. The gradients come from LoraTrainer (lora_trainer.h).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lora/lora.h"
#include "model/config.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace flashlm {

class ThreadPool;
class WeightPager;

// One training sequence: tokens, and a weight for each target (tokens[t + 1], so
// tokens.size() - 1 of them): 1 where the loss counts, 0 where it does not (prompts).
struct TrainingSample {
  std::vector<int32_t> tokens;
  std::vector<float> mask;
  int64_t targets() const;  // how many count
};

// Plain text: the token stream cut into sequences of seq_len + 1 tokens (each predicts
// seq_len), the first replaced by BOS when the model adds one; a shorter tail is dropped
// unless it is all there is.
std::vector<TrainingSample> text_samples(const Tokenizer& tokenizer, std::string_view text,
                                         int seq_len);
// JSONL, one {"messages": [{"role": ..., "content": ...}, ...]} per line, formatted with the
// model's chat template; the loss counts on the assistant turns only. A sample longer than
// seq_len + 1 tokens is cut. A malformed line is an Error naming the line.
std::vector<TrainingSample> chat_samples(const Tokenizer& tokenizer, std::string_view jsonl,
                                         int seq_len);

// A fresh adapter: A uniform in +-1/sqrt(in) (as PEFT's default), B zero, so training starts
// from the base model exactly.
LoraAdapter new_adapter(const ModelConfig& config, int rank, float alpha,
                        const std::vector<LoraTarget>& targets, uint64_t seed);

struct FinetuneOptions {
  int seq_len = 256;
  int batch = 1;  // sequences per step (their gradients summed)
  int steps = 100;
  float lr = 2e-4f;
  int warmup = 10;            // steps of linear warmup, then cosine down to lr * min_lr_ratio
  float min_lr_ratio = 0.1f;
  float weight_decay = 0.0f;
  uint64_t seed = 42;         // the order of the sequences
  int eval_every = 25;        // steps between held-out evaluations (0: only before and after)
  int eval_samples = 8;       // held-out sequences evaluated (0: all)
  // "adamw": backpropagation (LoraTrainer's gradients) and AdamW; "mezo": MeZO's zeroth-order
  // SPSA (Malladi et al. 2023), two forward passes a step and no gradient memory: the
  // baseline the MeBP paper compares with.
  std::string optimizer = "adamw";
  float mezo_eps = 1e-3f;  // MeZO's perturbation size
  // Every checkpoint_every steps (0: never) the whole training state (adapter, AdamW moments,
  // step, data order) goes to checkpoint_path, written under a temporary name and renamed;
  // resume_path continues from such a file exactly where it stopped.
  int checkpoint_every = 0;
  std::string checkpoint_path;
  std::string resume_path;
  // The base weights left on flash, read a layer at a time (LoraTrainer); null: in DRAM.
  const WeightPager* pager = nullptr;
};

float learning_rate(const FinetuneOptions& o, int step);  // step 1..steps

// The most tokens a training pass takes (targets of the longest sequence, at least 2).
int longest_sequence(const std::vector<TrainingSample>& train,
                     const std::vector<TrainingSample>& eval);

// What fine-tuning holds, for --mem-budget: with the base weights on flash (a WeightPager),
// two layers of them (one computing, the next being read) and two tiles of the output head;
// otherwise all of them.
struct TrainingMemory {
  uint64_t process = 0;      // measured before training: code, libraries, tokenizer, data
  uint64_t adapter = 0;      // the adapter; with AdamW also its gradient and two moments
  uint64_t activations = 0;  // checkpoints, a layer's intermediates, the loss's tiles
  uint64_t weights = 0;
  uint64_t reserve = 0;      // allocator slack, thread stacks, page cache of code
  bool weights_on_flash = false;
  uint64_t total() const { return process + adapter + activations + weights + reserve; }
  std::string describe(uint64_t budget) const;
};
// The plan for `budget` bytes: the weights in DRAM when everything fits, else on flash; an
// Error naming every part when even that does not fit.
TrainingMemory plan_training_memory(const ModelConfig& config, const ModelWeights& weights,
                                    uint64_t largest_layer_bytes, int64_t adapter_parameters,
                                    const std::string& optimizer, int max_tokens,
                                    uint64_t process_bytes, uint64_t budget);

struct StepReport {
  int step = 0, steps = 0;
  double loss = 0;        // mean over the step's targets
  float lr = 0;
  double seconds = 0;     // this step
  double tokens_per_second = 0;
  bool evaluated = false;
  double eval_loss = 0;   // mean over the held-out targets, when evaluated
};

// Mean loss per counted target over `samples` (at most `limit` of them; 0: all) with the
// adapter applied at scale 1.
double evaluate_loss(const ModelConfig& config, const ModelWeights& weights,
                     LoraAdapter& adapter, const std::vector<TrainingSample>& samples, int limit,
                     ThreadPool& pool, int max_tokens, const WeightPager* pager = nullptr);

// Trains `adapter` in place; `report` is called after every step (step 0: the evaluation
// before training, when there is held-out data).
void finetune(const ModelConfig& config, const ModelWeights& weights, LoraAdapter& adapter,
              const std::vector<TrainingSample>& train, const std::vector<TrainingSample>& eval,
              const FinetuneOptions& options, ThreadPool& pool,
              const std::function<void(const StepReport&)>& report);

}  // namespace flashlm
