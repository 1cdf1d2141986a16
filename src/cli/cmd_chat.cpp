// `flashlm chat`: a conversation in the terminal, formatted with the model's chat template.
// The KV cache carries over from turn to turn (server/session.h), so each turn processes only
// the new message. Ctrl-C stops the answer being written, Ctrl-D ends the conversation.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "common/error.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "server/session.h"

namespace flashlm {
namespace {

struct ChatOptions {
  CommonOptions common;
  std::string system;
  int n_predict = 0;
  SamplingParams sampling{.temperature = 0.7f, .top_k = 40, .top_p = 0.95f, .seed = 0};
  bool seed_given = false;
};

std::atomic<bool> interrupted{false};

extern "C" void on_interrupt(int) { interrupted = true; }

// Without SA_RESTART, Ctrl-C also breaks a read() that waits for input: see LineReader.
void install_interrupt_handler() {
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
}

enum class Input { Line, Interrupted, End };

// Reads standard input a line at a time with read(2) rather than stdio, because stdio treats
// the EINTR of Ctrl-C like an error and would end the conversation.
class LineReader {
 public:
  Input next(std::string& line) {
    for (;;) {
      if (const size_t newline = buffer_.find('\n'); newline != std::string::npos) {
        line = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return Input::Line;
      }
      char chunk[4096];
      const ssize_t n = ::read(STDIN_FILENO, chunk, sizeof chunk);
      if (n > 0) {
        buffer_.append(chunk, static_cast<size_t>(n));
      } else if (n < 0 && errno == EINTR) {
        if (interrupted.exchange(false)) {
          buffer_.clear();
          return Input::Interrupted;
        }
      } else if (buffer_.empty()) {
        return Input::End;
      } else {  // the input ends without a newline: its last line still counts
        line = std::move(buffer_);
        buffer_.clear();
        return Input::Line;
      }
    }
  }

 private:
  std::string buffer_;
};

// Encodes the conversation to fit in `limit` tokens, forgetting its oldest exchanges when it
// does not. Returns no tokens when even the newest message alone is too long.
std::vector<int32_t> encode_conversation(const Tokenizer& tokenizer,
                                         std::vector<ChatMessage>& messages, size_t first_turn,
                                         size_t limit) {
  for (;;) {
    std::vector<int32_t> tokens =
        tokenizer.encode(apply_chat_template(tokenizer, messages, true), tokenizer.add_bos(),
                         /*parse_special=*/true);
    if (tokens.size() <= limit) return tokens;
    const size_t turns = messages.size() - first_turn;
    if (turns <= 1) return {};
    // A user message and the answer to it; the newest message always stays.
    const auto oldest = messages.begin() + static_cast<std::ptrdiff_t>(first_turn);
    messages.erase(oldest, oldest + static_cast<std::ptrdiff_t>(std::min<size_t>(2, turns - 1)));
    std::fputs("(the oldest exchange was forgotten to make room in the context)\n", stderr);
  }
}

void chat(ChatOptions& o) {
  if (!o.seed_given) {
    o.sampling.seed =
        static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  auto model = Model::load(o.common.model_path);
  std::unique_ptr<Model> draft_model = o.common.load_draft_model(*model);
  Engine engine(*model, o.common.engine_options(draft_model.get()));
  if (engine.plan()) std::fprintf(stderr, "%s\n", engine.plan()->describe().c_str());
  const Tokenizer& tokenizer = model->tokenizer;
  const std::unique_ptr<Drafter> drafter = o.common.build_drafter(engine, std::move(draft_model));
  Session session(engine, tokenizer, {.drafter = drafter.get(), .max_tokens = o.common.draft_max});
  install_interrupt_handler();

  const int context = engine.transformer().context_size();
  // Room kept for each answer when the conversation grows long.
  const int answer_room = std::min(o.n_predict > 0 ? o.n_predict : context / 4, context / 2);
  const bool interactive = isatty(STDIN_FILENO);
  std::fprintf(stderr,
               "flashlm chat with %s: Enter sends, Ctrl-C stops an answer, /reset starts over, "
               "Ctrl-D quits\n",
               std::filesystem::path(o.common.model_path).filename().c_str());

  std::vector<ChatMessage> messages;
  if (!o.system.empty()) messages.push_back({"system", o.system});
  const size_t first_turn = messages.size();
  LineReader reader;
  std::string line;
  for (uint64_t turn = 0;; ++turn) {
    if (interactive) {
      std::fputs("> ", stdout);
      std::fflush(stdout);
    }
    const Input input = reader.next(line);
    if (input == Input::End) break;
    if (input == Input::Interrupted) {
      std::fputs("\n", stdout);
      continue;
    }
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (line == "/reset") {
      messages.resize(first_turn);
      std::fputs("(the conversation starts over)\n", stderr);
      continue;
    }
    messages.push_back({"user", line});
    const std::vector<int32_t> prompt = encode_conversation(
        tokenizer, messages, first_turn, static_cast<size_t>(context - answer_room));
    if (prompt.empty()) {
      std::fprintf(stderr,
                   "(that message does not fit in the context of %d tokens; a larger "
                   "--ctx-size would hold it)\n",
                   context);
      messages.pop_back();
      continue;
    }
    const int room = context - static_cast<int>(prompt.size());
    SamplingParams sampling = o.sampling;
    sampling.seed += turn;  // the same seed replays a whole conversation, not one answer
    interrupted = false;
    std::string answer;
    const SessionResult result =
        session.run({prompt, o.n_predict > 0 ? std::min(o.n_predict, room) : room, sampling, {},
                     [] { return interrupted.load(); }},
                    [&](std::string_view text) {
                      std::fwrite(text.data(), 1, text.size(), stdout);
                      std::fflush(stdout);
                      answer += text;
                      return !interrupted;
                    });
    std::fputs("\n", stdout);
    std::fflush(stdout);
    if (result.finish == Finish::Cancelled) std::fputs("(stopped)\n", stderr);
    if (result.finish == Finish::Length)
      std::fputs("(the answer reached its length limit)\n", stderr);
    interrupted = false;
    // What was shown is what the model said, so a stopped answer stays in the conversation.
    messages.push_back({"assistant", answer});
  }
  if (interactive) std::fputs("\n", stdout);
}

}  // namespace

void register_chat_command(CLI::App& app) {
  auto opts = std::make_shared<ChatOptions>();
  CLI::App* cmd = app.add_subcommand("chat", "Chat with the model in the terminal");
  opts->common.add_model(*cmd);
  opts->common.add_threads(*cmd);
  opts->common.add_context(*cmd, 4096);
  opts->common.add_flash(*cmd);
  opts->common.add_lora(*cmd);
  opts->common.add_draft(*cmd);
  cmd->add_option("--system", opts->system, "System message that opens the conversation");
  cmd->add_option("-n,--n-predict", opts->n_predict,
                  "Most tokens per answer (default: as many as the context holds)")
      ->check(CLI::NonNegativeNumber);
  add_sampling_options(*cmd, opts->sampling, opts->seed_given);
  cmd->callback([opts] { chat(*opts); });
}

}  // namespace flashlm
