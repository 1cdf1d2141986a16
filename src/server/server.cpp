#include "server/server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <atomic>
#include <mutex>
#include <ctime>
#include <optional>
#include <random>

#include "common/error.h"
#include "server/api.h"
#include "server/batch_generator.h"
#include "server/metrics.h"
#include "server/session.h"
#include "server/turn_queue.h"

namespace flashlm {
namespace {

using nlohmann::json;

// Requests wait for their turn on HTTP worker threads, so there is one per waiting request
// plus the running one, and some more so that /health, /metrics and the 503 answers of a
// full queue never wait behind them.
constexpr int kSpareThreads = 8;
// Completions without max_tokens stop at OpenAI's default; chat answers may fill the context.
constexpr int kDefaultCompletionTokens = 16;

const char* finish_reason(Finish finish) { return finish == Finish::Stop ? "stop" : "length"; }

// /metrics counts requests by endpoint; other paths share one label, so that a client probing
// random paths cannot grow the metrics without bound.
std::string endpoint_label(const std::string& path) {
  for (const char* known :
       {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}) {
    if (path == known) return path;
  }
  if (path.starts_with("/v1/models/")) return "/v1/models/{id}";
  return "other";
}

void send_error(httplib::Response& res, const ApiError& error) {
  res.status = error.status;
  res.set_content(error_body(error), "application/json");
}

ApiError server_error(const std::string& message) {
  return ApiError(500, message, {}, {}, "server_error");
}

void send_json(httplib::Response& res, const json& body) {
  res.set_content(json_text(body), "application/json");
}

// A request parsed, tokenized and checked against the context: ready for its turn.
struct PreparedRequest {
  ResponseMeta meta;
  std::vector<int32_t> prompt;
  int max_tokens = 0;
  GenerationParams params;
};

}  // namespace

struct ApiServer::Impl {
  Impl(Engine& engine, ServerOptions options);
  void add_routes();
  PreparedRequest prepare(Endpoint endpoint, const std::string& body);
  ApiError unavailable() const;
  // The request's place in line: a turn, or with --parallel a ticket; nothing when full.
  struct Admission {
    std::optional<TurnQueue::Turn> turn;
    std::optional<BatchGenerator::Ticket> ticket;
  };
  Admission admit(const PreparedRequest& request);
  SamplingParams sampling(const PreparedRequest& request);
  SessionResult generate(const PreparedRequest& request, Admission admission,
                         const TextCallback& on_text);
  void handle_generation(Endpoint endpoint, const httplib::Request& req, httplib::Response& res);
  bool stream(const PreparedRequest& request, Admission admission, httplib::DataSink& sink);

  Engine& engine;
  const Tokenizer& tokenizer;
  const ServerOptions options;
  const ApiLimits limits;
  const int64_t started = std::time(nullptr);
  Session session;
  TurnQueue queue;
  std::unique_ptr<BatchGenerator> batch;  // --parallel > 1
  Metrics metrics;
  httplib::Server http;
  std::atomic<bool> stopping{false};
  std::atomic<uint64_t> next_id{0};
  std::mutex seeds_mutex;  // requests are admitted from several threads at once
  std::mt19937_64 seeds{std::random_device{}()};
};

ApiServer::Impl::Impl(Engine& engine_, ServerOptions options_)
    : engine(engine_),
      tokenizer(engine_.model().tokenizer),
      options(std::move(options_)),
      limits{options.model_id, engine_.transformer().context_size(),
             engine_.model().config.vocab_size},
      session(engine_, engine_.model().tokenizer,
              DecodeOptions{.drafter = options.drafter, .max_tokens = options.draft_max}),
      queue(options.max_queue) {
  if (options.parallel > 1) {
    if (options.drafter) {
      fail("speculative decoding (--draft) and --parallel {} do not go together yet: each pass "
           "verifies one sequence's drafts; pick one",
           options.parallel);
    }
    if (engine.sequences() != options.parallel) {
      fail("internal error: --parallel {} needs an engine with {} KV caches, not {}",
           options.parallel, options.parallel, engine.sequences());
    }
    batch = std::make_unique<BatchGenerator>(engine, tokenizer, options.max_queue);
  }
  const size_t threads =
      static_cast<size_t>(options.max_queue + options.parallel) + kSpareThreads;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(options.max_body);
  add_routes();
}

// A text that makes more tokens than the context holds is refused before it is tokenized: a
// text of n bytes makes at least n / (the longest token's bytes) tokens.
static void check_prompt_length(const Tokenizer& tokenizer, size_t bytes, int context_size,
                         const char* param) {
  const size_t at_least = bytes / tokenizer.longest_token_bytes();
  if (at_least > static_cast<size_t>(context_size)) {
    throw ApiError(400,
                   fmt::format("'{}' is {} bytes, which make at least {} tokens, more than the "
                               "context of {} tokens holds; shorten it (or start the server "
                               "with a larger -c)",
                               param, bytes, at_least, context_size),
                   param, "context_length_exceeded");
  }
}

PreparedRequest ApiServer::Impl::prepare(Endpoint endpoint, const std::string& body) {
  PreparedRequest p;
  const bool chat = endpoint == Endpoint::Chat;
  if (chat) {
    ChatRequest r = parse_chat_request(body, limits);
    const std::string text = apply_chat_template(tokenizer, r.messages, true);
    check_prompt_length(tokenizer, text.size(), limits.context_size, "messages");
    p.prompt = tokenizer.encode(text, tokenizer.add_bos(), /*parse_special=*/true);
    p.params = std::move(r.params);
  } else {
    CompletionRequest r = parse_completion_request(body, limits);
    if (!r.prompt_is_tokens) {
      check_prompt_length(tokenizer, r.prompt.size(), limits.context_size, "prompt");
    }
    // Special tokens in a raw prompt count as such, so a client can apply its own template.
    p.prompt = r.prompt_is_tokens
                   ? std::move(r.prompt_tokens)
                   : tokenizer.encode(r.prompt, tokenizer.add_bos(), /*parse_special=*/true);
    // An empty prompt asks for text from nothing, which is what the start token means.
    if (p.prompt.empty() && tokenizer.bos_id() >= 0) p.prompt.push_back(tokenizer.bos_id());
    if (p.prompt.empty()) throw ApiError(400, "'prompt' is empty", "prompt");
    p.params = std::move(r.params);
  }
  p.max_tokens = resolve_max_tokens(
      p.params, static_cast<int>(p.prompt.size()), limits.context_size,
      chat ? limits.context_size : kDefaultCompletionTokens, chat ? "messages" : "prompt");
  p.meta = {.endpoint = endpoint,
            .id = fmt::format("{}-{:x}{:06x}", chat ? "chatcmpl" : "cmpl", started, next_id++),
            .created = std::time(nullptr),
            .model = options.model_id};
  return p;
}

ApiError ApiServer::Impl::unavailable() const {
  if (stopping) return ApiError(503, "the server is shutting down", {}, {}, "server_error");
  return ApiError(503,
                  fmt::format("the server is busy: {} requests are waiting already; retry later",
                              options.max_queue),
                  {}, "server_busy", "server_error");
}

SamplingParams ApiServer::Impl::sampling(const PreparedRequest& request) {
  SamplingParams sampling = request.params.sampling;
  if (!request.params.seed_given) {
    std::lock_guard lock(seeds_mutex);
    sampling.seed = seeds();
  }
  return sampling;
}

ApiServer::Impl::Admission ApiServer::Impl::admit(const PreparedRequest& request) {
  Admission admission;
  if (batch) {
    admission.ticket = batch->submit({request.prompt, request.max_tokens, sampling(request),
                                      request.params.stop, [this] { return stopping.load(); }});
    if (!admission.ticket) throw unavailable();
  } else {
    std::optional<TurnQueue::Turn> turn = queue.acquire();
    if (!turn) throw unavailable();
    admission.turn.emplace(std::move(*turn));
  }
  return admission;
}

SessionResult ApiServer::Impl::generate(const PreparedRequest& request, Admission admission,
                                        const TextCallback& on_text) {
  const auto text = [&](std::string_view piece) { return !stopping && on_text(piece); };
  GenerationRecord record;
  SessionResult result;
  if (admission.ticket) {
    result = batch->wait(std::move(*admission.ticket), text);
  } else {
    result = session.run({request.prompt, request.max_tokens, sampling(request),
                          request.params.stop, [this] { return stopping.load(); }},
                         text);
    // The engine's counters are read under the turn; with --parallel they change under every
    // request at once, so they are left out there.
    if (const FlashStats* flash = engine.flash_stats()) record.flash_bytes_read = flash->bytes_read;
    if (const SparseStats* sparse = engine.sparse_stats(); sparse && sparse->neurons_active > 0) {
      record.cache_hit_rate =
          static_cast<double>(sparse->cache_hits) / static_cast<double>(sparse->neurons_active);
    }
  }
  record.prompt_tokens = result.prompt_tokens;
  record.reused_tokens = result.reused_tokens;
  record.completion_tokens = result.completion_tokens;
  record.decode_tokens_per_second = result.stats.decode_tokens_per_second();
  metrics.record_generation(record);
  return result;
}

void ApiServer::Impl::handle_generation(Endpoint endpoint, const httplib::Request& req,
                                        httplib::Response& res) {
  try {
    // httplib limits bodies sent with a Content-Length; this catches chunked uploads too.
    if (req.body.size() > options.max_body) {
      throw ApiError(413, fmt::format("the request body is larger than the limit of {} bytes",
                                      options.max_body));
    }
    auto request = std::make_shared<PreparedRequest>(prepare(endpoint, req.body));
    Admission admission = admit(*request);
    if (request->params.stream) {
      // httplib calls the provider after this handler returns, so the admission goes with it.
      auto held = std::make_shared<Admission>(std::move(admission));
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider("text/event-stream",
                                       [this, request, held](size_t, httplib::DataSink& sink) {
                                         return stream(*request, std::move(*held), sink);
                                       });
      return;
    }
    std::string text;
    const SessionResult result = generate(*request, std::move(admission), [&](std::string_view piece) {
      text += piece;
      return true;
    });
    if (result.finish == Finish::Cancelled) throw unavailable();  // only stopping cancels here
    send_json(res, response_body(request->meta, text, finish_reason(result.finish),
                                 {result.prompt_tokens, result.completion_tokens}));
  } catch (const ApiError& e) {
    send_error(res, e);
  } catch (const std::exception& e) {
    send_error(res, server_error(e.what()));
  }
}

// Returns false to have httplib close the connection: the client left, or the server stops.
bool ApiServer::Impl::stream(const PreparedRequest& request, Admission admission,
                             httplib::DataSink& sink) {
  const ResponseMeta& meta = request.meta;
  const auto send = [&sink](const std::string& event) {
    return sink.write(event.data(), event.size());
  };
  // A chat stream opens with the assistant's role, as OpenAI's does.
  if (meta.endpoint == Endpoint::Chat && !send(sse_event(chunk_body(meta, "", "", true)))) {
    return false;
  }
  SessionResult result;
  try {
    result = generate(request, std::move(admission), [&](std::string_view text) {
      // A write fails once the client has gone, which cancels the generation.
      return text.empty() ? sink.is_writable() : send(sse_event(chunk_body(meta, text, "")));
    });
  } catch (const std::exception& e) {
    // The status line has gone out already, so the error travels as an event, as OpenAI's do.
    const bool ok = send(sse_event(error_json(server_error(e.what())))) && send("data: [DONE]\n\n");
    if (ok) sink.done();
    return ok;
  }
  if (result.finish == Finish::Cancelled) return false;
  bool ok = send(sse_event(chunk_body(meta, "", finish_reason(result.finish))));
  if (ok && request.params.include_usage) {
    ok = send(sse_event(usage_chunk_body(meta, {result.prompt_tokens, result.completion_tokens})));
  }
  ok = ok && send("data: [DONE]\n\n");
  if (ok) sink.done();
  return ok;
}

void ApiServer::Impl::add_routes() {
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(Endpoint::Completions, req, res);
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(Endpoint::Chat, req, res);
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, models_body(options.model_id, started));
  });
  http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    if (id != options.model_id) {
      return send_error(res, ApiError(404,
                                      fmt::format("the model '{}' does not exist; this server "
                                                  "serves '{}'",
                                                  id, options.model_id),
                                      "model", "model_not_found"));
    }
    send_json(res, model_body(options.model_id, started));
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (stopping) res.status = 503;
    send_json(res, {{"status", stopping ? "stopping" : "ok"}});
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(batch ? metrics.render(batch->waiting(), batch->running() > 0)
                          : metrics.render(queue.waiting(), queue.busy()),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  // Errors httplib raises itself (unknown path, body over the limit) come without a body.
  http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                     httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    if (res.status == 413) {
      send_error(res, ApiError(413, fmt::format("the request body is larger than the limit of {} "
                                                "bytes",
                                                options.max_body)));
    } else if (res.status == 404) {
      send_error(res, ApiError(404, fmt::format("there is no {} {}", req.method, req.path)));
    } else {
      send_error(res, ApiError(res.status, fmt::format("HTTP status {}", res.status), {}, {},
                               res.status >= 500 ? "server_error" : "invalid_request_error"));
    }
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics.count_request(endpoint_label(req.path), res.status);
    fmt::print(stderr, "{} {} {}\n", req.method, req.path, res.status);
  });
}

ApiServer::ApiServer(Engine& engine, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, std::move(options))) {}

ApiServer::~ApiServer() = default;

int ApiServer::bind() {
  const ServerOptions& o = impl_->options;
  const int port = o.port == 0 ? impl_->http.bind_to_any_port(o.host)
                               : (impl_->http.bind_to_port(o.host, o.port) ? o.port : -1);
  if (port < 0) {
    fail(
        "cannot listen on {}:{}; the port may be in use (pick another with --port) or the "
        "address not on this machine",
        o.host, o.port);
  }
  return port;
}

void ApiServer::listen() { impl_->http.listen_after_bind(); }

void ApiServer::stop() {
  impl_->stopping = true;
  impl_->queue.close();
  if (impl_->batch) impl_->batch->close();
  impl_->http.stop();
}

}  // namespace flashlm
