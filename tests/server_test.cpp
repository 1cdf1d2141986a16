// The server's request rules, response shapes, stop sequences, turn queue and metrics,
// without a socket. tests/server/ runs the real server over HTTP.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <thread>

#include "server/api.h"
#include "server/metrics.h"
#include "server/stop_matcher.h"
#include "server/turn_queue.h"

namespace flashlm {
namespace {

using nlohmann::json;

const ApiLimits kLimits{.model_id = "tiny.gguf", .context_size = 256, .vocab_size = 1000};

// Runs `parse` on `body` and returns the ApiError it must throw.
template <typename Parse>
ApiError error_of(Parse parse, const std::string& body) {
  try {
    parse(body, kLimits);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return ApiError(0, "");
}

ApiError completion_error(const std::string& body) {
  return error_of(parse_completion_request, body);
}
ApiError chat_error(const std::string& body) { return error_of(parse_chat_request, body); }

TEST(ServerApi, CompletionDefaults) {
  const CompletionRequest r = parse_completion_request(R"({"prompt": "Hello"})", kLimits);
  EXPECT_EQ(r.prompt, "Hello");
  EXPECT_FALSE(r.prompt_is_tokens);
  EXPECT_FALSE(r.params.max_tokens);
  EXPECT_FALSE(r.params.stream);
  EXPECT_FALSE(r.params.seed_given);
  EXPECT_EQ(r.params.sampling.temperature, 1.0f);
  EXPECT_EQ(r.params.sampling.top_p, 1.0f);
  EXPECT_EQ(r.params.sampling.top_k, 0);
  EXPECT_TRUE(r.params.stop.empty());
}

TEST(ServerApi, CompletionSettings) {
  const CompletionRequest r = parse_completion_request(
      R"({"model": "tiny.gguf", "prompt": ["Hi"], "max_tokens": 5, "temperature": 0,
          "top_p": 0.5, "top_k": 7, "seed": -3, "stop": ["\n", ""], "stream": true,
          "stream_options": {"include_usage": true}, "n": 1, "logprobs": null, "user": "x"})",
      kLimits);
  EXPECT_EQ(r.prompt, "Hi");
  EXPECT_EQ(r.params.max_tokens, 5);
  EXPECT_EQ(r.params.sampling.temperature, 0.0f);
  EXPECT_EQ(r.params.sampling.top_p, 0.5f);
  EXPECT_EQ(r.params.sampling.top_k, 7);
  EXPECT_TRUE(r.params.seed_given);
  EXPECT_EQ(r.params.sampling.seed, static_cast<uint64_t>(-3));
  EXPECT_EQ(r.params.stop, std::vector<std::string>{"\n"});
  EXPECT_TRUE(r.params.stream);
  EXPECT_TRUE(r.params.include_usage);
}

TEST(ServerApi, CompletionTokenPrompt) {
  const CompletionRequest r = parse_completion_request(R"({"prompt": [1, 2, 999]})", kLimits);
  EXPECT_TRUE(r.prompt_is_tokens);
  EXPECT_EQ(r.prompt_tokens, (std::vector<int32_t>{1, 2, 999}));
  EXPECT_EQ(completion_error(R"({"prompt": [1, 1000]})").param, "prompt");
  EXPECT_EQ(completion_error(R"({"prompt": [1, -1]})").param, "prompt");
}

TEST(ServerApi, TopPZeroMeansGreedy) {
  const CompletionRequest r =
      parse_completion_request(R"({"prompt": "a", "top_p": 0, "temperature": 1})", kLimits);
  EXPECT_EQ(r.params.sampling.temperature, 0.0f);
  EXPECT_EQ(r.params.sampling.top_p, 1.0f);
}

TEST(ServerApi, BadBodies) {
  for (const char* body : {"", "{", "not json", R"({"prompt": "a",})"}) {
    const ApiError e = completion_error(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.type, "invalid_request_error");
  }
  EXPECT_EQ(completion_error(R"(["prompt"])").status, 400);
  EXPECT_EQ(chat_error("42").status, 400);
}

TEST(ServerApi, BadCompletionFields) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({})", "prompt"},
      {R"({"prompt": null})", "prompt"},
      {R"({"prompt": 5})", "prompt"},
      {R"({"prompt": ["a", "b"]})", "prompt"},
      {R"({"prompt": [[1, 2]]})", "prompt"},
      {R"({"prompt": "a", "max_tokens": -1})", "max_tokens"},
      {R"({"prompt": "a", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "a", "max_tokens": 257})", "max_tokens"},
      {R"({"prompt": "a", "max_tokens": 99999999999999999999})", "max_tokens"},
      {R"({"prompt": "a", "max_tokens": "10"})", "max_tokens"},
      {R"({"prompt": "a", "max_tokens": 1.5})", "max_tokens"},
      {R"({"prompt": "a", "temperature": 2.5})", "temperature"},
      {R"({"prompt": "a", "temperature": "hot"})", "temperature"},
      {R"({"prompt": "a", "top_p": 1.1})", "top_p"},
      {R"({"prompt": "a", "top_k": -1})", "top_k"},
      {R"({"prompt": "a", "seed": "x"})", "seed"},
      {R"({"prompt": "a", "stop": 3})", "stop"},
      {R"({"prompt": "a", "stop": ["a", 3]})", "stop"},
      {R"({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]})", "stop"},
      {R"({"prompt": "a", "stream": "yes"})", "stream"},
      {R"({"prompt": "a", "n": 2})", "n"},
      {R"({"prompt": "a", "best_of": 3})", "best_of"},
      {R"({"prompt": "a", "echo": true})", "echo"},
      {R"({"prompt": "a", "logprobs": 2})", "logprobs"},
      {R"({"prompt": "a", "presence_penalty": 0.5})", "presence_penalty"},
      {R"({"prompt": "a", "model": 7})", "model"},
  };
  for (const auto& [body, param] : cases) {
    const ApiError e = completion_error(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, param) << body;
  }
}

TEST(ServerApi, UnknownModel) {
  const ApiError e = completion_error(R"({"prompt": "a", "model": "gpt-4"})");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "model_not_found");
  EXPECT_NE(e.message.find("tiny.gguf"), std::string::npos);
}

TEST(ServerApi, ChatMessages) {
  const ChatRequest r = parse_chat_request(
      R"({"messages": [{"role": "developer", "content": "Be brief."},
                       {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                                    {"type": "text", "text": "there"}]},
                       {"role": "assistant", "content": "Hello"}],
          "max_completion_tokens": 9})",
      kLimits);
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "Hi there");
  EXPECT_EQ(r.messages[2].role, "assistant");
  EXPECT_EQ(r.params.max_tokens, 9);
}

TEST(ServerApi, BadChatFields) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({})", "messages"},
      {R"({"messages": "hi"})", "messages"},
      {R"({"messages": []})", "messages"},
      {R"({"messages": ["hi"]})", "messages[0]"},
      {R"({"messages": [{"content": "hi"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "robot", "content": "hi"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "tool", "content": "hi"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "user"}]})",
       "messages[1].content"},
      {R"({"messages": [{"role": "user", "content": 3}]})", "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": "a"}], "max_tokens": -5})", "max_tokens"},
      {R"({"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]})",
       "tools"},
  };
  for (const auto& [body, param] : cases) {
    const ApiError e = chat_error(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, param) << body;
  }
}

TEST(ServerApi, MaxTokensAgainstContext) {
  GenerationParams p;
  EXPECT_EQ(resolve_max_tokens(p, 10, 256, 16, "prompt"), 16);
  EXPECT_EQ(resolve_max_tokens(p, 250, 256, 16, "prompt"), 6);
  p.max_tokens = 100;
  EXPECT_EQ(resolve_max_tokens(p, 156, 256, 16, "prompt"), 100);
  try {
    resolve_max_tokens(p, 157, 256, 16, "prompt");
    ADD_FAILURE() << "prompt + max_tokens over the context was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param, "max_tokens");
    EXPECT_EQ(e.code, "context_length_exceeded");
  }
  p.max_tokens.reset();
  try {
    resolve_max_tokens(p, 256, 256, 16, "messages");
    ADD_FAILURE() << "a prompt filling the context was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "messages");
  }
}

TEST(ServerApi, ErrorBody) {
  const json e = json::parse(error_body(ApiError(400, "bad thing", "prompt")));
  EXPECT_EQ(e["error"]["message"], "bad thing");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["param"], "prompt");
  EXPECT_TRUE(e["error"]["code"].is_null());
  EXPECT_TRUE(json::parse(error_body(ApiError(503, "busy")))["error"]["param"].is_null());
}

TEST(ServerApi, Responses) {
  const ResponseMeta chat{Endpoint::Chat, "chatcmpl-1", 1700000000, "tiny.gguf"};
  const json r = response_body(chat, "Hello", "stop", {.prompt_tokens = 5, .completion_tokens = 2});
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r["choices"][0]["message"]["content"], "Hello");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(r["usage"]["total_tokens"], 7);

  const json first = chunk_body(chat, "", "", true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const json last = chunk_body(chat, "", "length");
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(usage_chunk_body(chat, {1, 1})["choices"].empty());

  const ResponseMeta text{Endpoint::Completions, "cmpl-1", 1700000000, "tiny.gguf"};
  EXPECT_EQ(response_body(text, "x", "length", {})["object"], "text_completion");
  EXPECT_EQ(chunk_body(text, "piece", "")["choices"][0]["text"], "piece");
  EXPECT_EQ(models_body("tiny.gguf", 1)["data"][0]["id"], "tiny.gguf");
}

TEST(ServerApi, ServerSentEvents) {
  EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  // A broken UTF-8 sequence from the model must not throw halfway through a stream.
  const std::string event = sse_event(json{{"text", std::string("ok\xC3")}});
  EXPECT_NE(event.find("ok\xEF\xBF\xBD"), std::string::npos);
}

TEST(StopMatcher, PassesTextWithoutStops) {
  StopMatcher m({});
  EXPECT_EQ(m.push("Hello"), "Hello");
  EXPECT_EQ(m.push(" world"), " world");
  EXPECT_EQ(m.flush(), "");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, StopAcrossPieces) {
  StopMatcher m({"END"});
  EXPECT_EQ(m.push("one E"), "one ");  // "E" could begin "END"
  EXPECT_EQ(m.push("N"), "");
  EXPECT_EQ(m.push("Dtwo"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, ReleasesFalseStarts) {
  StopMatcher m({"END"});
  EXPECT_EQ(m.push("EN"), "");
  EXPECT_EQ(m.push("d"), "ENd");
  EXPECT_EQ(m.push("E"), "");
  EXPECT_EQ(m.flush(), "E");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, EarliestStopWins) {
  StopMatcher m({"cd", "b"});
  EXPECT_EQ(m.push("abcd"), "a");
  EXPECT_TRUE(m.stopped());
  StopMatcher at_start({"\n"});
  EXPECT_EQ(at_start.push("\nrest"), "");
  EXPECT_TRUE(at_start.stopped());
}

TEST(TurnQueue, OneAtATimeAndBounded) {
  TurnQueue queue(1);
  std::optional<TurnQueue::Turn> first = queue.acquire();
  ASSERT_TRUE(first);
  EXPECT_TRUE(queue.busy());
  std::atomic<bool> second_ran{false};
  std::thread second([&] {
    const auto turn = queue.acquire();
    EXPECT_TRUE(turn);
    second_ran = true;
  });
  while (queue.waiting() < 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_FALSE(queue.acquire());  // one runs, one waits: full
  EXPECT_FALSE(second_ran);
  first.reset();
  second.join();
  EXPECT_TRUE(second_ran);
  EXPECT_FALSE(queue.busy());
  EXPECT_TRUE(queue.acquire());
}

TEST(TurnQueue, CloseTurnsWaitersAway) {
  TurnQueue queue(4);
  auto running = queue.acquire();
  std::thread waiter([&] { EXPECT_FALSE(queue.acquire()); });
  while (queue.waiting() < 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  queue.close();
  waiter.join();
  EXPECT_FALSE(queue.acquire());
}

TEST(ServerMetrics, Render) {
  Metrics m;
  m.count_request("/v1/completions", 200);
  m.count_request("/v1/completions", 200);
  m.count_request("/v1/completions", 400);
  m.record_generation({.prompt_tokens = 10,
                       .reused_tokens = 4,
                       .completion_tokens = 3,
                       .decode_tokens_per_second = 12.5,
                       .flash_bytes_read = 4096});
  const std::string text = m.render(2, true);
  EXPECT_NE(text.find("flashlm_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("status=\"400\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("flashlm_generated_tokens_total 3\n"), std::string::npos);
  EXPECT_NE(text.find("flashlm_prompt_tokens_reused_total 4\n"), std::string::npos);
  EXPECT_NE(text.find("flashlm_last_tokens_per_second 12.5\n"), std::string::npos);
  EXPECT_NE(text.find("flashlm_flash_bytes_read_total 4096\n"), std::string::npos);
  EXPECT_NE(text.find("flashlm_queue_waiting 2\n"), std::string::npos);
  EXPECT_EQ(text.find("hit_ratio"), std::string::npos);  // dense: no neuron cache
  EXPECT_NE(text.find("# TYPE flashlm_requests_total counter\n"), std::string::npos);
}

}  // namespace
}  // namespace flashlm
