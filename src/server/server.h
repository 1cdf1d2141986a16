// `flashlm serve`: an OpenAI-compatible HTTP server for one model.
//   POST /v1/completions, POST /v1/chat/completions (stream or not), GET /v1/models,
//   GET /health, GET /metrics (Prometheus).
// One generation runs at a time, or with `parallel` N > 1 up to N together, each pass of the
// model advancing all of them (continuous batching, server/batch_generator.h); up to max_queue
// requests wait for their turn, and further ones get 503. A streaming client that disconnects
// cancels its generation.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "speculative/draft.h"

namespace flashlm {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port
  int max_queue = 8;
  size_t max_body = 1 << 20;  // bytes; larger requests get 413
  std::string model_id;       // what clients call the model: the file name
  // Speculative decoding for every request (null: none); it must outlive the server.
  Drafter* drafter = nullptr;
  int draft_max = 8;
  // Requests generating together; the engine needs EngineOptions::sequences = parallel.
  int parallel = 1;
};

class ApiServer {
 public:
  ApiServer(Engine& engine, ServerOptions options);
  ~ApiServer();

  // Binds the listening socket and returns its port; throws Error when it cannot.
  int bind();
  // Answers requests until stop(); in-flight requests finish (cut short) before it returns.
  void listen();
  // From any thread but not from a signal handler: cancels the running generation, turns
  // away waiting requests and ends listen().
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flashlm
