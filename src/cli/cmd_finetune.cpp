// `flashlm finetune`: trains a LoRA adapter on a text (or JSONL chat) file through the frozen,
// quantized model and writes it in llama.cpp's adapter format (so `--lora` here and llama.cpp
// both load it).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>

#include "cli/commands.h"
#include "common/error.h"
#include "common/process_memory.h"
#include "common/text_file.h"
#include "common/thread_pool.h"
#include "flash/loaded_model.h"
#include "flash/memory_plan.h"
#include "model/weight_pager.h"
#include "train/finetune.h"
#include "train/loss_plot.h"

namespace flashlm {
namespace {

struct FinetuneCliOptions {
  CommonOptions common;
  std::string train_file, eval_file, output = "adapter.gguf", modules = "all", loss_csv, plot;
  int rank = 8;
  float alpha = 16;
  int epochs = 0;
  FinetuneOptions train;
};

std::vector<TrainingSample> samples_of(const Model& model, const std::string& path, int seq_len) {
  const std::string text = read_text_file(path, "training data");
  if (path.ends_with(".jsonl")) return chat_samples(model.tokenizer, text, seq_len);
  return text_samples(model.tokenizer, text, seq_len);
}

void run_finetune(FinetuneCliOptions& o) {
  const auto model = Model::load(o.common.model_path);
  if (model->flash) {
    fail("{} is a .flm file: fine-tuning reads the base weights from the GGUF so far (pass the "
         "GGUF it was converted from)",
         o.common.model_path);
  }
  const std::vector<LoraTarget> targets = parse_lora_targets(o.modules);
  FinetuneOptions& t = o.train;
  t.seq_len = o.common.engine.context_size;
  const std::vector<TrainingSample> train = samples_of(*model, o.train_file, t.seq_len);
  std::vector<TrainingSample> eval;
  if (!o.eval_file.empty()) eval = samples_of(*model, o.eval_file, t.seq_len);
  if (o.epochs > 0) {
    t.steps = static_cast<int>((static_cast<int64_t>(o.epochs) * train.size() + t.batch - 1) / t.batch);
  }
  LoraAdapter adapter = new_adapter(model->config, o.rank, o.alpha, targets, t.seed);
  // Under a budget, the base weights stay on flash unless all of them fit (MeBP).
  std::optional<WeightPager> pager;
  if (!o.common.engine.mem_budget.empty()) {
    const uint64_t budget =
        parse_memory_budget(o.common.engine.mem_budget, model->file->file_size());
    pager.emplace(*model->file, model->weights);
    const TrainingMemory memory = plan_training_memory(
        model->config, model->weights, pager->largest_layer_bytes(), adapter.parameters(),
        t.optimizer, longest_sequence(train, eval), resident_set_bytes(), budget);
    std::fprintf(stderr, "%s\n", memory.describe(budget).c_str());
    if (memory.weights_on_flash) {
      t.pager = &*pager;
    } else {
      pager.reset();
    }
  }
  if (t.checkpoint_every > 0) t.checkpoint_path = o.output + ".checkpoint";
  std::fprintf(stderr,
               "finetune: %s, LoRA rank %d alpha %g on %s (%.2f M parameters), %zu training "
               "sequences of up to %d tokens, %zu held out; %d %s steps of %d sequences, lr %g\n",
               model->config.summary().c_str(), o.rank, o.alpha, o.modules.c_str(),
               adapter.parameters() / 1e6, train.size(), t.seq_len, eval.size(), t.steps,
               t.optimizer.c_str(), t.batch, t.lr);
  ThreadPool pool(o.common.engine.threads > 0 ? o.common.engine.threads : ThreadPool::default_threads());
  std::unique_ptr<std::ofstream> csv;
  if (!o.loss_csv.empty()) {
    csv = std::make_unique<std::ofstream>(o.loss_csv);
    if (!*csv) fail("cannot write {}", o.loss_csv);
    *csv << "step,loss,eval_loss,lr,seconds\n";
  }
  double first_eval = NAN, last_eval = NAN, seconds = 0;
  std::vector<LossPoint> train_curve, eval_curve;
  finetune(model->config, model->weights, adapter, train, eval, t, pool, [&](const StepReport& r) {
    seconds += r.seconds;
    if (r.step > 0) train_curve.push_back({r.step, r.loss});
    if (r.evaluated) eval_curve.push_back({r.step, r.eval_loss});
    if (r.evaluated) {
      if (std::isnan(first_eval)) first_eval = r.eval_loss;
      last_eval = r.eval_loss;
    }
    if (r.step > 0) {
      std::fprintf(stderr, "step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | %.2f s/step | peak RSS %.0f MiB",
                   r.step, r.steps, r.loss, r.lr, r.tokens_per_second, r.seconds,
                   peak_resident_set_bytes() / 1048576.0);
    }
    if (r.evaluated) {
      std::fprintf(stderr, "%sheld-out loss %.4f (perplexity %.2f)", r.step > 0 ? " | " : "",
                   r.eval_loss, std::exp(r.eval_loss));
    }
    std::fprintf(stderr, "\n");
    if (csv) {
      *csv << r.step << "," << (r.step > 0 ? std::to_string(r.loss) : "") << ","
           << (r.evaluated ? std::to_string(r.eval_loss) : "") << "," << r.lr << "," << r.seconds << "\n";
    }
  });
  adapter.save(o.output, model->config.name);
  const std::string plot = o.plot.empty() ? o.output + ".loss.png" : o.plot;
  write_loss_plot(plot, train_curve, eval_curve, t.steps);
  std::printf("loss curve: %s\n", plot.c_str());
  std::printf("wrote %s (%.2f M parameters) after %d steps in %.1f s (%.2f s/step), peak RSS %.0f MiB",
              o.output.c_str(), adapter.parameters() / 1e6, t.steps, seconds, seconds / t.steps,
              peak_resident_set_bytes() / 1048576.0);
  if (!std::isnan(first_eval)) {
    std::printf("; held-out loss %.4f -> %.4f (perplexity %.2f -> %.2f)", first_eval, last_eval,
                std::exp(first_eval), std::exp(last_eval));
  }
  std::printf("\n");
}

}  // namespace

void register_finetune_command(CLI::App& app) {
  auto o = std::make_shared<FinetuneCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "finetune", "Train a LoRA adapter (llama.cpp's format) on a text or JSONL chat file");
  o->common.add_model(*cmd);
  o->common.add_threads(*cmd);
  o->common.engine.context_size = 256;
  cmd->add_option("-c,--ctx-size", o->common.engine.context_size, "Tokens per training sequence")
      ->check(CLI::Range(1, 8192))
      ->capture_default_str();
  cmd->add_option("-f,--file", o->train_file,
                  "Training data: plain text (cut into sequences of -c tokens) or .jsonl chat "
                  "samples ({\"messages\": [...]}, loss on the assistant turns)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--eval-file", o->eval_file, "Held-out data, evaluated every --eval-every steps")
      ->check(CLI::ExistingFile);
  cmd->add_option("-o,--output", o->output, "The adapter to write")->capture_default_str();
  cmd->add_option("--mem-budget", o->common.engine.mem_budget,
                  "Everything the process may hold (e.g. 300M, 1G, or 50% of the model file): "
                  "the base weights stay on flash, read a layer at a time, unless all fit");
  cmd->add_option("--lora-rank", o->rank, "Rank of each adapter pair")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--lora-alpha", o->alpha, "Alpha: pairs are applied with scale alpha / rank")
      ->capture_default_str();
  cmd->add_option("--lora-modules", o->modules,
                  "Matrices to adapt: attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, "
                  "ffn_down, comma-separated, or attn, ffn, all")
      ->capture_default_str();
  cmd->add_option("--batch", o->train.batch, "Sequences per step")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--steps", o->train.steps, "Optimizer steps")
      ->check(CLI::Range(1, 10000000))
      ->capture_default_str();
  cmd->add_option("--epochs", o->epochs, "Passes over the training data (overrides --steps)")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--lr", o->train.lr, "Peak learning rate (AdamW)")->capture_default_str();
  cmd->add_option("--warmup", o->train.warmup, "Steps of linear warmup before the cosine decay")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--min-lr-ratio", o->train.min_lr_ratio, "The cosine ends at lr times this")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--weight-decay", o->train.weight_decay, "AdamW's decoupled weight decay")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("-s,--seed", o->train.seed, "Seed of the initialization and the data order")
      ->capture_default_str();
  cmd->add_option("--eval-every", o->train.eval_every, "Steps between held-out evaluations")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--eval-samples", o->train.eval_samples,
                  "Held-out sequences per evaluation (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--optimizer", o->train.optimizer,
                  "adamw (backpropagation) or mezo (zeroth-order SPSA: forward passes only)")
      ->check(CLI::IsMember({"adamw", "mezo"}))
      ->capture_default_str();
  cmd->add_option("--mezo-eps", o->train.mezo_eps, "MeZO's perturbation size")->capture_default_str();
  cmd->add_option("--checkpoint-every", o->train.checkpoint_every,
                  "Steps between checkpoints of the whole training state (OUTPUT.checkpoint)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--resume", o->train.resume_path,
                  "Continue from a checkpoint (same data, -c, --lora-rank, --lora-modules)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--loss-plot", o->plot, "The loss curve's PNG (default: OUTPUT.loss.png)");
  cmd->add_option("--loss-csv", o->loss_csv, "Write the loss curve (step, loss, held-out loss) here");
  cmd->callback([o] { run_finetune(*o); });
}

}  // namespace flashlm
