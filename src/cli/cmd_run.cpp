// `flashlm run`: generate a continuation of a prompt, streaming tokens as they come.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "common/error.h"
#include "common/thread_pool.h"
#include "common/text_file.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "flash/loaded_model.h"

namespace flashlm {
namespace {

struct RunOptions {
  CommonOptions common;
  std::string prompt;
  std::string prompt_file;
  int n_predict = 128;
  SamplingParams sampling{.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 0};
  bool seed_given = false;
  bool chat = false;
  std::string system;
};

void run(RunOptions& o) {
  if (!o.prompt_file.empty()) o.prompt = read_text_file(o.prompt_file, "prompt file");
  if (!o.seed_given) {
    o.sampling.seed = static_cast<uint64_t>(
        std::chrono::steady_clock::now().time_since_epoch().count());
  }
  auto model = Model::load(o.common.model_path);
  std::unique_ptr<Model> draft_model = o.common.load_draft_model(*model);
  Engine engine(*model, o.common.engine_options(draft_model.get()));
  if (engine.plan()) std::fprintf(stderr, "%s\n", engine.plan()->describe().c_str());
  Sampler sampler(o.sampling);

  std::string text = o.prompt;
  if (o.chat) {
    std::vector<ChatMessage> messages;
    if (!o.system.empty()) messages.push_back({"system", o.system});
    messages.push_back({"user", o.prompt});
    text = apply_chat_template(model->tokenizer, messages, true);
  }
  const bool add_bos = model->tokenizer.add_bos();
  std::vector<int32_t> prompt = model->tokenizer.encode(text, add_bos, /*parse_special=*/o.chat);
  if (prompt.empty()) fail("the prompt is empty; pass one with -p or -f");
  std::fputs(o.prompt.c_str(), stdout);
  std::fflush(stdout);

  StreamDecoder decoder(model->tokenizer);
  const std::unique_ptr<Drafter> drafter = o.common.build_drafter(engine, std::move(draft_model));
  const GenerationStats stats = generate(
      engine.transformer(), sampler, model->tokenizer, prompt, o.n_predict,
      [&](int32_t token) {
        std::fputs(decoder.push(token).c_str(), stdout);
        std::fflush(stdout);
        return true;
      },
      {}, {.drafter = drafter.get(), .max_tokens = o.common.draft_max});
  std::fputs(decoder.flush().c_str(), stdout);
  std::fputs("\n", stdout);
  std::fprintf(stderr,
               "\nprompt: %d tokens in %.2f s (%.1f tokens/s) | decode: %d tokens in %.2f s "
               "(%.1f tokens/s) | %d threads\n",
               stats.prompt_tokens, stats.prompt_seconds, stats.prompt_tokens_per_second(),
               stats.generated_tokens, stats.decode_seconds, stats.decode_tokens_per_second(),
               engine.pool().size());
  if (drafter) {
    std::fprintf(stderr,
                 "draft %s: %.2f tokens per pass (%d passes), acceptance %.1f%% (%d of %d "
                 "drafted), draft %.1f ms, verify %.1f ms\n",
                 drafter->name().c_str(), stats.tokens_per_pass(), stats.decode_passes,
                 100.0 * stats.draft_acceptance(), stats.accepted_tokens, stats.drafted_tokens,
                 1e3 * stats.draft_seconds, 1e3 * stats.verify_seconds);
  }
}

}  // namespace

void register_run_command(CLI::App& app) {
  auto opts = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", "Generate a continuation of a prompt");
  opts->common.add_model(*cmd);
  opts->common.add_threads(*cmd);
  opts->common.add_context(*cmd, 2048);
  opts->common.add_flash(*cmd);
  opts->common.add_lora(*cmd);
  opts->common.add_draft(*cmd);
  cmd->add_option("-p,--prompt", opts->prompt, "Prompt text");
  cmd->add_option("-f,--file", opts->prompt_file, "Read the prompt from this file")
      ->check(CLI::ExistingFile);
  cmd->add_option("-n,--n-predict", opts->n_predict, "Tokens to generate")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  add_sampling_options(*cmd, opts->sampling, opts->seed_given);
  cmd->add_flag("--chat", opts->chat, "Wrap the prompt in the model's chat template");
  cmd->add_option("--system", opts->system, "System message for --chat");
  cmd->callback([opts] {
    if (opts->prompt.empty() && opts->prompt_file.empty()) {
      fail("no prompt: pass -p TEXT or -f FILE");
    }
    run(*opts);
  });
}

}  // namespace flashlm
