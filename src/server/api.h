// The OpenAI-compatible HTTP API as plain functions: parse and validate request bodies, build
// response bodies, stream chunks and error bodies. Nothing here touches a socket or the
// engine, so every rule of the API can be tested without a server.
#pragma once

#include <cstdint>
#include <exception>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sampling/sampler.h"
#include "tokenizer/tokenizer.h"

namespace flashlm {

// A request the server refuses, as OpenAI reports it: HTTP status plus
// {"error": {"message", "type", "param", "code"}}. Empty param or code serialize as null.
class ApiError : public std::exception {
 public:
  ApiError(int http_status, std::string text, std::string param_name = {},
           std::string error_code = {}, std::string error_type = "invalid_request_error")
      : status(http_status),
        message(std::move(text)),
        param(std::move(param_name)),
        code(std::move(error_code)),
        type(std::move(error_type)) {}
  const char* what() const noexcept override { return message.c_str(); }

  int status;
  std::string message, param, code, type;
};

nlohmann::json error_json(const ApiError& error);
std::string error_body(const ApiError& error);

// What a request may ask of this server's one model.
struct ApiLimits {
  std::string model_id;  // requests naming another model are refused
  int context_size = 0;
  int vocab_size = 0;
};

// The generation settings both endpoints share.
struct GenerationParams {
  std::optional<int> max_tokens;  // absent: the endpoint's default
  SamplingParams sampling{.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
  bool seed_given = false;  // without a seed, each request samples differently
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the counts
};

struct CompletionRequest {
  // The API takes a prompt as text or as token ids; exactly one of these is used.
  std::string prompt;
  std::vector<int32_t> prompt_tokens;
  bool prompt_is_tokens = false;
  GenerationParams params;
};

struct ChatRequest {
  std::vector<ChatMessage> messages;
  GenerationParams params;
};

// Both throw ApiError (status 400) for anything the server cannot honour exactly.
CompletionRequest parse_completion_request(const std::string& body, const ApiLimits& limits);
ChatRequest parse_chat_request(const std::string& body, const ApiLimits& limits);

// The max_tokens a request gets once its prompt is tokenized: its own (which must fit in the
// context with the prompt) or the endpoint's default, cut to the room left. Throws ApiError
// when the prompt leaves no room at all.
int resolve_max_tokens(const GenerationParams& params, int prompt_tokens, int context_size,
                       int default_max_tokens, const char* prompt_param);

enum class Endpoint { Completions, Chat };

// What identifies one response across all its chunks.
struct ResponseMeta {
  Endpoint endpoint = Endpoint::Completions;
  std::string id;
  int64_t created = 0;  // Unix seconds
  std::string model;
};

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

nlohmann::json response_body(const ResponseMeta& meta, std::string_view text,
                             std::string_view finish_reason, const Usage& usage);
// A streamed piece of the answer; finish_reason empty while the answer goes on. A chat
// stream's first chunk (first = true) also carries the assistant role.
nlohmann::json chunk_body(const ResponseMeta& meta, std::string_view text,
                          std::string_view finish_reason, bool first = false);
// The last chunk of a stream that asked for stream_options.include_usage.
nlohmann::json usage_chunk_body(const ResponseMeta& meta, const Usage& usage);
nlohmann::json models_body(const std::string& model_id, int64_t created);
nlohmann::json model_body(const std::string& model_id, int64_t created);

// One server-sent event: "data: JSON\n\n". Invalid UTF-8 from the model becomes U+FFFD
// rather than an exception halfway through a stream.
std::string sse_event(const nlohmann::json& body);
std::string json_text(const nlohmann::json& body);

}  // namespace flashlm
