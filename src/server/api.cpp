#include "server/api.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace flashlm {
namespace {

using nlohmann::json;

json null_if_empty(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

ApiError bad(std::string message, std::string param = {}) {
  return ApiError(400, std::move(message), std::move(param));
}

// For settings this server cannot honour: refusing beats silently answering something else.
ApiError unsupported(const std::string& param, std::string message = {}) {
  if (message.empty()) message = fmt::format("'{}' is not supported by this server", param);
  return ApiError(400, std::move(message), param, "unsupported_parameter");
}

json parse_object(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw bad("the request body is not valid JSON");
  if (!j.is_object()) throw bad("the request body must be a JSON object");
  return j;
}

// OpenAI's clients send null for a setting left at its default, so null counts as absent.
const json* field(const json& object, const char* name) {
  const auto it = object.find(name);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

// object["key"] when it is a string, else "" (json::value() throws for a number there).
std::string string_member(const json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

ApiError wrong_type(const char* name, const char* expected, const json& value) {
  return bad(fmt::format("'{}' must be {}, got {}", name, expected, value.type_name()), name);
}

std::optional<double> number_field(const json& object, const char* name, double lo, double hi) {
  const json* v = field(object, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) throw wrong_type(name, "a number", *v);
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) {
    throw bad(fmt::format("'{}' must be between {} and {}, got {}", name, lo, hi, x), name);
  }
  return x;
}

std::optional<int64_t> integer_field(const json& object, const char* name) {
  const json* v = field(object, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) throw wrong_type(name, "an integer", *v);
  if (v->is_number_unsigned() &&
      v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    throw bad(fmt::format("'{}' is too large", name), name);
  }
  return v->get<int64_t>();
}

bool bool_field(const json& object, const char* name) {
  const json* v = field(object, name);
  if (!v) return false;
  if (!v->is_boolean()) throw wrong_type(name, "a boolean", *v);
  return v->get<bool>();
}

void check_model(const json& request, const ApiLimits& limits) {
  const json* v = field(request, "model");
  if (!v) return;  // one model, so naming it is optional
  if (!v->is_string()) throw wrong_type("model", "a string", *v);
  const std::string& name = v->get_ref<const std::string&>();
  if (name != limits.model_id) {
    throw ApiError(400,
                   fmt::format("the model '{}' does not exist; this server serves '{}'", name,
                               limits.model_id),
                   "model", "model_not_found");
  }
}

std::vector<std::string> parse_stop(const json& request) {
  const json* v = field(request, "stop");
  if (!v) return {};
  if (v->is_string()) return {v->get<std::string>()};
  if (!v->is_array()) throw wrong_type("stop", "a string or a list of strings", *v);
  if (v->size() > 4) throw bad("'stop' takes at most 4 sequences", "stop");
  std::vector<std::string> stops;
  for (const json& s : *v) {
    if (!s.is_string()) throw wrong_type("stop", "a string or a list of strings", s);
    if (!s.get_ref<const std::string&>().empty()) stops.push_back(s.get<std::string>());
  }
  return stops;
}

void reject_unsupported(const json& request) {
  if (const auto n = integer_field(request, "n"); n && *n != 1) {
    throw unsupported("n", "this server generates one choice per request: 'n' must be 1");
  }
  if (const auto n = integer_field(request, "best_of"); n && *n != 1) {
    throw unsupported("best_of",
                      "this server generates one choice per request: 'best_of' must be 1");
  }
  for (const char* name : {"presence_penalty", "frequency_penalty"}) {
    if (number_field(request, name, -2.0, 2.0).value_or(0.0) != 0.0) throw unsupported(name);
  }
  if (bool_field(request, "echo")) throw unsupported("echo");
  // logprobs is a boolean for chat and a count for completions; either way only "off" works.
  if (const json* v = field(request, "logprobs"); v && *v != false && *v != 0) {
    throw unsupported("logprobs");
  }
  if (const json* v = field(request, "top_logprobs"); v && *v != 0) {
    throw unsupported("top_logprobs");
  }
  if (const json* v = field(request, "suffix"); v && *v != "") throw unsupported("suffix");
  for (const char* name : {"logit_bias", "tools", "functions"}) {
    if (const json* v = field(request, name); v && !v->empty()) throw unsupported(name);
  }
  if (const json* v = field(request, "response_format")) {
    if (!v->is_object() || string_member(*v, "type") != "text") {
      throw unsupported("response_format");
    }
  }
}

GenerationParams parse_params(const json& request, const ApiLimits& limits, Endpoint endpoint) {
  check_model(request, limits);
  reject_unsupported(request);
  GenerationParams p;
  // max_completion_tokens is the chat API's newer name for max_tokens.
  const char* max_name = endpoint == Endpoint::Chat && field(request, "max_completion_tokens")
                             ? "max_completion_tokens"
                             : "max_tokens";
  if (const auto n = integer_field(request, max_name)) {
    if (*n < 1 || *n > limits.context_size) {
      throw bad(fmt::format("'{}' must be between 1 and {} (the context size), got {}", max_name,
                            limits.context_size, *n),
                max_name);
    }
    p.max_tokens = static_cast<int>(*n);
  }
  p.sampling.temperature =
      static_cast<float>(number_field(request, "temperature", 0.0, 2.0).value_or(1.0));
  p.sampling.top_p = static_cast<float>(number_field(request, "top_p", 0.0, 1.0).value_or(1.0));
  if (p.sampling.top_p == 0.0f) {  // keeping no probability mass at all means: the top token
    p.sampling.temperature = 0.0f;
    p.sampling.top_p = 1.0f;
  }
  // top_k is not in OpenAI's API, but llama.cpp's server takes it and so do many clients.
  if (const auto k = integer_field(request, "top_k")) {
    if (*k < 0) throw bad(fmt::format("'top_k' must be 0 (off) or positive, got {}", *k), "top_k");
    p.sampling.top_k = static_cast<int>(std::min<int64_t>(*k, limits.vocab_size));
  }
  if (const auto seed = integer_field(request, "seed")) {
    p.sampling.seed = static_cast<uint64_t>(*seed);
    p.seed_given = true;
  }
  p.stop = parse_stop(request);
  p.stream = bool_field(request, "stream");
  if (const json* v = field(request, "stream_options")) {
    if (!v->is_object()) throw wrong_type("stream_options", "an object", *v);
    p.include_usage = bool_field(*v, "include_usage");
  }
  return p;
}

std::string message_content(const json& message, const std::string& param) {
  const json* content = field(message, "content");
  if (!content) throw bad(fmt::format("'{}.content' is required", param), param + ".content");
  if (content->is_string()) return content->get<std::string>();
  // The newer form: a list of parts, of which this server reads text only.
  if (content->is_array()) {
    std::string text;
    for (const json& part : *content) {
      if (!part.is_object() || string_member(part, "type") != "text" || !part.contains("text") ||
          !part["text"].is_string()) {
        throw unsupported(param + ".content", "this server reads text content parts only");
      }
      text += part["text"].get_ref<const std::string&>();
    }
    return text;
  }
  throw bad(fmt::format("'{}.content' must be a string or a list of text parts", param),
            param + ".content");
}

std::vector<ChatMessage> parse_messages(const json& request) {
  const json* v = field(request, "messages");
  if (!v) throw bad("'messages' is required", "messages");
  if (!v->is_array()) throw wrong_type("messages", "a list of messages", *v);
  if (v->empty()) throw bad("'messages' must hold at least one message", "messages");
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string param = fmt::format("messages[{}]", i);
    if (!m.is_object()) throw bad(fmt::format("'{}' must be an object", param), param);
    const json* role = field(m, "role");
    if (!role || !role->is_string()) {
      throw bad(fmt::format("'{}.role' must be a string", param), param + ".role");
    }
    std::string name = role->get<std::string>();
    if (name == "developer") name = "system";  // OpenAI's newer name for the system role
    if (name == "tool" || name == "function") {
      throw unsupported(param + ".role",
                        fmt::format("{} messages are not supported by this server", name));
    }
    if (name != "system" && name != "user" && name != "assistant") {
      throw bad(fmt::format("'{}.role' must be system, user or assistant, got '{}'", param, name),
                param + ".role");
    }
    messages.push_back({std::move(name), message_content(m, param)});
  }
  return messages;
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json envelope(const ResponseMeta& meta, const char* object) {
  return {{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

}  // namespace

json error_json(const ApiError& error) {
  return {{"error",
           {{"message", error.message},
            {"type", error.type},
            {"param", null_if_empty(error.param)},
            {"code", null_if_empty(error.code)}}}};
}

std::string error_body(const ApiError& error) { return json_text(error_json(error)); }

CompletionRequest parse_completion_request(const std::string& body, const ApiLimits& limits) {
  const json request = parse_object(body);
  CompletionRequest r;
  const json* prompt = field(request, "prompt");
  if (!prompt) throw bad("'prompt' is required", "prompt");
  const char* expected = "a string, a list of one string or a list of token ids";
  if (prompt->is_string()) {
    r.prompt = prompt->get<std::string>();
  } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_string()) {
    if (prompt->size() != 1) throw bad("this server takes one prompt per request", "prompt");
    r.prompt = (*prompt)[0].get<std::string>();
  } else if (prompt->is_array() && !prompt->empty()) {
    for (const json& t : *prompt) {
      if (!t.is_number_integer()) throw wrong_type("prompt", expected, t);
      if (t.get<int64_t>() < 0 || t.get<int64_t>() >= limits.vocab_size) {
        throw bad(fmt::format("token id {} in 'prompt' is outside the vocabulary (0..{})", t.dump(),
                              limits.vocab_size - 1),
                  "prompt");
      }
      r.prompt_tokens.push_back(t.get<int32_t>());
    }
    r.prompt_is_tokens = true;
  } else {
    throw wrong_type("prompt", expected, *prompt);
  }
  r.params = parse_params(request, limits, Endpoint::Completions);
  return r;
}

ChatRequest parse_chat_request(const std::string& body, const ApiLimits& limits) {
  const json request = parse_object(body);
  ChatRequest r;
  r.messages = parse_messages(request);
  r.params = parse_params(request, limits, Endpoint::Chat);
  return r;
}

int resolve_max_tokens(const GenerationParams& params, int prompt_tokens, int context_size,
                       int default_max_tokens, const char* prompt_param) {
  const int room = context_size - prompt_tokens;
  if (room <= 0) {
    throw ApiError(400,
                   fmt::format("the prompt is {} tokens and the context holds {}; shorten it or "
                               "start the server with a larger --ctx-size",
                               prompt_tokens, context_size),
                   prompt_param, "context_length_exceeded");
  }
  if (!params.max_tokens) return std::min(default_max_tokens, room);
  if (*params.max_tokens > room) {
    throw ApiError(400,
                   fmt::format("the prompt ({} tokens) and max_tokens ({}) exceed the context "
                               "size {}; ask for at most {} tokens",
                               prompt_tokens, *params.max_tokens, context_size, room),
                   "max_tokens", "context_length_exceeded");
  }
  return *params.max_tokens;
}

json response_body(const ResponseMeta& meta, std::string_view text, std::string_view finish_reason,
                   const Usage& usage) {
  const bool chat = meta.endpoint == Endpoint::Chat;
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
  if (chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  json body = envelope(meta, chat ? "chat.completion" : "text_completion");
  body["choices"] = json::array({choice});
  body["usage"] = usage_json(usage);
  return body;
}

json chunk_body(const ResponseMeta& meta, std::string_view text, std::string_view finish_reason,
                bool first) {
  const bool chat = meta.endpoint == Endpoint::Chat;
  json choice = {{"index", 0},
                 {"logprobs", nullptr},
                 {"finish_reason", finish_reason.empty() ? json(nullptr) : json(finish_reason)}};
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (first || !text.empty()) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  json body = envelope(meta, chat ? "chat.completion.chunk" : "text_completion");
  body["choices"] = json::array({choice});
  return body;
}

json usage_chunk_body(const ResponseMeta& meta, const Usage& usage) {
  json body =
      envelope(meta, meta.endpoint == Endpoint::Chat ? "chat.completion.chunk" : "text_completion");
  body["choices"] = json::array();
  body["usage"] = usage_json(usage);
  return body;
}

json model_body(const std::string& model_id, int64_t created) {
  return {{"id", model_id}, {"object", "model"}, {"created", created}, {"owned_by", "flashlm"}};
}

json models_body(const std::string& model_id, int64_t created) {
  return {{"object", "list"}, {"data", json::array({model_body(model_id, created)})}};
}

std::string json_text(const json& body) {
  return body.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

std::string sse_event(const json& body) { return "data: " + json_text(body) + "\n\n"; }

}  // namespace flashlm
