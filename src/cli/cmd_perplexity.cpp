// `flashlm perplexity`: perplexity of a model on a text file, as llama.cpp's
// llama-perplexity computes it: the text is cut into chunks of --ctx-size tokens, each chunk
// is evaluated from an empty context, and only the second half of each chunk is scored (so
// every scored token has at least ctx/2 tokens of context).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "common/error.h"
#include "common/thread_pool.h"
#include "common/text_file.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "engine/perplexity.h"

namespace flashlm {
namespace {

struct PerplexityOptions {
  CommonOptions common;
  std::string text_file;
  int max_chunks = 0;
  int batch = 64;
};

void perplexity(const PerplexityOptions& o) {
  const std::string text = read_text_file(o.text_file, "text file");
  auto model = Model::load(o.common.model_path);
  EngineOptions options = o.common.engine_options();
  options.max_batch = o.batch;
  options.all_logits = true;  // every scored token's logits
  Engine engine(*model, options);
  if (engine.plan()) std::fprintf(stderr, "%s\n", engine.plan()->describe().c_str());
  const PerplexityResult r = evaluate_perplexity(
      engine.transformer(), model->tokenizer, text, options.context_size, o.max_chunks,
      [](int chunk, int chunks, double ppl) {
        std::fprintf(stderr, "\rchunk %d/%d: perplexity so far %.4f", chunk, chunks, ppl);
      });
  std::fprintf(stderr, "\n");
  std::printf("perplexity: %.4f (+/- %.4f) over %ld tokens in %d chunks of %d, %.1f tokens/s\n",
              r.perplexity, r.perplexity_stderr, static_cast<long>(r.scored_tokens), r.chunks,
              options.context_size, r.tokens_per_second);
}

}  // namespace

void register_perplexity_command(CLI::App& app) {
  auto opts = std::make_shared<PerplexityOptions>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Measure perplexity on a text file");
  opts->common.add_model(*cmd);
  opts->common.add_threads(*cmd);
  opts->common.add_context(*cmd, 512);
  opts->common.add_flash(*cmd);
  opts->common.add_lora(*cmd);
  cmd->add_option("-f,--file", opts->text_file, "Text file to evaluate")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--chunks", opts->max_chunks, "Evaluate at most this many chunks (0: all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("-b,--batch-size", opts->batch, "Tokens per forward step (logits held at once)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->callback([opts] { perplexity(*opts); });
}

}  // namespace flashlm
