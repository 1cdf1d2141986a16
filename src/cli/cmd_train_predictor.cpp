// `flashlm train-predictor`: train the per-layer activation predictors of `sparse` mode for one
// calibrated sparsity level, on what the dense model does with calibration text, and store them
// in the sparsity file next to the thresholds.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/progress.h"
#include "common/error.h"
#include "common/thread_pool.h"
#include "common/text_file.h"
#include "flash/loaded_model.h"
#include "gguf/gguf.h"
#include "sparse/predictor_training.h"

namespace flashlm {

void register_train_predictor_command(CLI::App& app) {
  struct Options {
    std::string model, text, sparse_file, budget;
    float sparsity = 0.5f;
    int rank = 64, rank_last = 128;
    PredictorTrainingOptions training;
    CalibrationOptions calibration;
  };
  auto o = std::make_shared<Options>();
  o->calibration.max_tokens = 4096;
  CLI::App* cmd = app.add_subcommand(
      "train-predictor",
      "Train the activation predictors of sparse mode for one calibrated sparsity level");
  cmd->add_option("-m,--model", o->model, "Model (.flm)")->required();
  cmd->add_option("-f,--file", o->text, "Calibration text (keep it apart from evaluation text)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--sparse-file", o->sparse_file,
                  "Sparsity file with the thresholds, where the predictors go too (default: "
                  "MODEL.flm.sparse)");
  cmd->add_option("--sparsity", o->sparsity, "Calibrated sparsity level to train for")
      ->check(CLI::Range(0.01, 0.99))
      ->capture_default_str();
  cmd->add_option("--tokens", o->calibration.max_tokens,
                  "Calibration tokens (the last 10% are held out)")
      ->check(CLI::Range(256, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--rank", o->rank, "Predictor rank of the first three quarters of the layers")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--rank-last", o->rank_last,
                  "Predictor rank of the last quarter of the layers (harder to predict)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--epochs", o->training.epochs, "Passes over the training tokens")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--batch", o->training.batch, "Tokens per Adam step")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  cmd->add_option("--lr", o->training.lr, "Adam learning rate")
      ->check(CLI::Range(1e-6, 1.0))
      ->capture_default_str();
  cmd->add_option("--recall", o->training.target_recall,
                  "Lower each layer's decision threshold below p = 0.5 until held-out recall "
                  "reaches this")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--pin-factor", o->training.pin_factor,
                  "Always select a neuron whose largest calibration activation exceeds this many "
                  "times its layer's 99th percentile of per-neuron peaks (massive activations a "
                  "low-rank predictor misses; 0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("-t,--threads", o->calibration.threads, "Worker threads (default: all cores)");
  cmd->add_option("--mem-budget", o->budget,
                  "Memory the whole process may use (as for run): the FFN then streams from "
                  "flash (hybrid) around the samples and training state this command keeps")
      ->envname("FLASHLM_MEM_BUDGET");
  cmd->callback([o] {
    using Clock = std::chrono::steady_clock;
    const std::string text = read_text_file(o->text, "calibration text");
    auto model = Model::load(o->model);
    const ModelConfig& c = model->config;
    const std::string path = o->sparse_file.empty() ? sparsity_file_for(o->model) : o->sparse_file;
    std::vector<float> thresholds;
    {
      std::unique_ptr<GgufFile> file;
      try {
        file = GgufFile::open(path);
      } catch (const Error& e) {
        fail("{}\nthe predictors learn the thresholds of a calibration run; run it first: "
             "flashlm calibrate -m {} -f TEXT",
             e.what(), o->model);
      }
      thresholds = SparsityProfile::from_gguf(*file, c.n_layers).at(o->sparsity);
    }

    std::vector<int> ranks(c.n_layers, o->rank);
    for (int l = c.n_layers - c.n_layers / 4; l < c.n_layers; ++l) ranks[l] = o->rank_last;
    const int threads =
        o->calibration.threads > 0 ? o->calibration.threads : ThreadPool::default_threads();
    const auto plan = tool_memory_plan(
        *model, o->budget, threads, o->calibration.segment_tokens,
        predictor_training_bytes(c, o->calibration.max_tokens, ranks, threads));
    o->calibration.ffn_plan = plan.get();

    auto start = Clock::now();
    std::vector<PredictorSamples> samples;
    {
      ProgressBar bar("running the dense model");
      samples = collect_predictor_samples(*model, text, o->calibration, thresholds,
                                          [&](int done, int total) { bar.update(done, total); });
    }
    const double collect_seconds = std::chrono::duration<double>(Clock::now() - start).count();

    ThreadPool pool(threads);
    std::vector<LayerTrainingReport> reports;
    start = Clock::now();
    ActivationPredictor predictor;
    {
      ProgressBar bar("training");
      predictor = train_predictor(samples, ranks, o->sparsity, o->training, pool, reports,
                                  [&](int done, int total) { bar.update(done, total); });
    }
    const double train_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    save_predictor(path, predictor);

    std::printf("%s, sparsity %.2f, %lld tokens (last 10%% held out: first half tunes the "
                "decision threshold, second half measures)\n",
                c.name.c_str(), o->sparsity, static_cast<long long>(samples[0].size()));
    std::printf(
        "| layer | rank | active | predicted | recall | precision | decision p | pinned |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    double recall = 0, precision = 0, predicted = 0, active = 0;
    for (int l = 0; l < c.n_layers; ++l) {
      const LayerTrainingReport& r = reports[l];
      std::printf("| %d | %d | %.1f%% | %.1f%% | %.1f%% | %.1f%% | %.3f | %d |\n", l, ranks[l],
                  100 * r.active_share, 100 * r.predicted_share, 100 * r.recall,
                  100 * r.precision, 1 / (1 + std::exp(-predictor.layers[l].decision)), r.pinned);
      recall += r.recall;
      precision += r.precision;
      predicted += r.predicted_share;
      active += r.active_share;
    }
    const double n = c.n_layers;
    std::printf("| mean | | %.1f%% | %.1f%% | %.1f%% | %.1f%% | | |\n", 100 * active / n,
                100 * predicted / n, 100 * recall / n, 100 * precision / n);
    std::printf("dense run %.1fs, training %.1fs (%d epochs, batch %d, lr %g, %d threads); wrote "
                "%s\n",
                collect_seconds, train_seconds, o->training.epochs, o->training.batch,
                o->training.lr, pool.size(), path.c_str());
  });
}

}  // namespace flashlm
