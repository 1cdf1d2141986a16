// `flashlm serve`: an OpenAI-compatible HTTP server (see server/server.h).
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "cli/commands.h"
#include "common/error.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "flash/memory_plan.h"
#include "server/server.h"

namespace flashlm {
namespace {

struct ServeOptions {
  CommonOptions common;
  ServerOptions server;
  std::string max_body = "1M";
};

// Set by SIGINT and SIGTERM. A signal handler may do little more than this, so a watcher
// thread turns it into ApiServer::stop().
std::atomic<bool> stop_requested{false};

extern "C" void request_stop(int) { stop_requested = true; }

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = request_stop;
  // One signal stops cleanly; should that hang, a second one kills the default way.
  action.sa_flags = SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  // A client that disconnects makes writes fail; they must not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
}

// The size syntax of --mem-budget, less the percentage, which means nothing here.
size_t parse_body_limit(const std::string& text) {
  uint64_t bytes = 0;
  if (!text.ends_with('%')) {
    try {
      bytes = parse_memory_budget(text, 0);
    } catch (const Error&) {
      bytes = 0;
    }
  }
  if (bytes == 0) fail("cannot read --max-body '{}': use a size such as 1M or 64K, or bytes", text);
  return bytes;
}

void serve(ServeOptions& o) {
  o.server.max_body = parse_body_limit(o.max_body);
  o.server.model_id = std::filesystem::path(o.common.model_path).filename().string();
  o.server.draft_max = o.common.draft_max;
  install_stop_handlers();
  auto model = Model::load(o.common.model_path);
  std::unique_ptr<Model> draft_model = o.common.load_draft_model(*model);
  EngineOptions engine_options = o.common.engine_options(draft_model.get());
  engine_options.sequences = o.server.parallel;
  if (engine_options.context_size / o.server.parallel < 2) {
    fail("-c {} shared by --parallel {} leaves each request under 2 tokens of context; raise -c",
         engine_options.context_size, o.server.parallel);
  }
  Engine engine(*model, engine_options);
  if (engine.plan()) std::fprintf(stderr, "%s\n", engine.plan()->describe().c_str());
  const std::unique_ptr<Drafter> drafter = o.common.build_drafter(engine, std::move(draft_model));
  o.server.drafter = drafter.get();
  ApiServer server(engine, o.server);
  const int port = server.bind();

  // A stop lets the request in progress end at its next step (a batch of its prompt, or a
  // token) and the server close cleanly; should that take longer than kStopGrace (a batch of
  // a large model, a request still being read), the process ends there anyway: a stop
  // request is answered within a second, whatever a request is doing.
  static constexpr auto kStopGrace = std::chrono::milliseconds(700);
  std::atomic<bool> stopped{false};
  std::jthread watcher([&server, &stopped](std::stop_token done) {
    while (!done.stop_requested() && !stop_requested) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!stop_requested) return;
    server.stop();
    const auto deadline = std::chrono::steady_clock::now() + kStopGrace;
    while (!stopped && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (stopped) return;
    std::fprintf(stderr, "flashlm serve: stopped (a request still running was abandoned)\n");
    std::fflush(stderr);
    std::fflush(stdout);
    std::_Exit(0);
  });
  // On stdout, so that scripts that start the server with --port 0 can read the port.
  std::printf(
      "flashlm serve: listening on http://%s:%d (model %s, context %d per request, %d parallel, "
      "%d threads)\n",
      o.server.host.c_str(), port, o.server.model_id.c_str(), engine.transformer().context_size(),
      o.server.parallel, engine.pool().size());
  std::fflush(stdout);
  server.listen();
  stopped = true;
  std::fprintf(stderr, "flashlm serve: stopped\n");
}

}  // namespace

void register_serve_command(CLI::App& app) {
  auto opts = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API");
  opts->common.add_model(*cmd);
  opts->common.add_threads(*cmd);
  opts->common.add_context(*cmd, 2048);
  opts->common.add_flash(*cmd);
  opts->common.add_lora(*cmd);
  opts->common.add_draft(*cmd);
  cmd->add_option("--host", opts->server.host,
                  "Address to listen on; 0.0.0.0 exposes the server to the network")
      ->capture_default_str();
  cmd->add_option("--port", opts->server.port, "Port to listen on; 0 picks a free one")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--max-queue", opts->server.max_queue,
                  "Requests that may wait while one generates; more get 503")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  cmd->add_option("--parallel", opts->server.parallel,
                  "(also -np) Requests that generate together, each pass of the model serving all of them "
                  "(continuous batching); they share -c, each getting c / N tokens of context")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  cmd->add_option("--max-body", opts->max_body, "Largest request body (e.g. 1M, 64K); more get 413")
      ->capture_default_str();
  cmd->callback([opts] { serve(*opts); });
}

}  // namespace flashlm
