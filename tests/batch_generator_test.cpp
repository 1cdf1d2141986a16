// Continuous batching (serve --parallel): requests generating together in shared passes get
// exactly what each gets alone (Session, one request at a time), greedy and sampled, on a tiny
// model and on the real SmolLM2 from flash; more requests than slots wait, a full queue turns
// requests away, and closing cancels.
#include "server/batch_generator.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "flash/loaded_model.h"
#include "flash/flash_layout.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

struct Outcome {
  std::string text;
  SessionResult result;
};

struct Request {
  std::vector<int32_t> prompt;
  int max_tokens;
  SamplingParams sampling;
  std::vector<std::string> stop;
};

EngineOptions batch_options(int sequences, int context_per_sequence, const std::string& mode = "dense",
                            const std::string& budget = "") {
  return {.threads = 2, .context_size = sequences * context_per_sequence, .max_batch = 16,
          .sequences = sequences, .mode = mode, .mem_budget = budget};
}

// Each request alone, one after the other, on a fresh single-sequence engine.
std::vector<Outcome> alone(const Model& model, const EngineOptions& options,
                           const std::vector<Request>& requests) {
  EngineOptions one = options;
  one.context_size = options.context_size / options.sequences;
  one.sequences = 1;
  Engine engine(model, one);
  std::vector<Outcome> outcomes;
  for (const Request& r : requests) {
    Session session(engine, model.tokenizer);  // nothing reused from the request before
    Outcome o;
    o.result = session.run({r.prompt, r.max_tokens, r.sampling, r.stop},
                           [&](std::string_view text) { return o.text += text, true; });
    outcomes.push_back(std::move(o));
  }
  return outcomes;
}

// All requests at once, each from a thread of its own, as the server's handlers do.
std::vector<Outcome> together(BatchGenerator& generator, const std::vector<Request>& requests) {
  std::vector<Outcome> outcomes(requests.size());
  std::vector<std::optional<BatchGenerator::Ticket>> tickets;
  for (const Request& r : requests) {
    tickets.push_back(generator.submit({r.prompt, r.max_tokens, r.sampling, r.stop}));
    EXPECT_TRUE(tickets.back().has_value());
  }
  std::vector<std::jthread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] {
      Outcome& o = outcomes[i];
      o.result = generator.wait(std::move(*tickets[i]),
                                [&](std::string_view text) { return o.text += text, true; });
    });
  }
  threads.clear();  // joins
  return outcomes;
}

void expect_same(const std::vector<Outcome>& got, const std::vector<Outcome>& expected) {
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].text, expected[i].text) << "request " << i;
    EXPECT_EQ(got[i].result.completion_tokens, expected[i].result.completion_tokens) << i;
    EXPECT_EQ(got[i].result.finish, expected[i].result.finish) << "request " << i;
    EXPECT_EQ(got[i].result.prompt_tokens, expected[i].result.prompt_tokens) << i;
  }
}

std::vector<Request> tiny_requests() {
  return {{{72, 101, 108, 108, 111}, 40, {.temperature = 0}, {}},
          {{119, 111, 114, 108, 100, 33, 32, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77,
            78, 79},
           25, {.temperature = 0.9f, .seed = 3}, {}},
          {{33}, 50, {.temperature = 1.3f, .top_k = 0, .top_p = 1.0f, .seed = 11}, {}},
          {{80, 81, 82}, 7, {.temperature = 0}, {}},
          {{72, 101, 108, 108, 111, 32}, 30, {.temperature = 0}, {"e"}}};
}

TEST(BatchGenerator, RequestsTogetherEqualEachAlone) {
  const std::string path = testing::temp_path("batch.gguf");
  testing::write_tiny_model(path, {.weight_type = TensorType::Q8_0});
  auto model = Model::load(path);
  const EngineOptions options = batch_options(3, 64);
  const std::vector<Request> requests = tiny_requests();  // 5 requests for 3 slots
  const std::vector<Outcome> expected = alone(*model, options, requests);
  Engine engine(*model, options);
  BatchGenerator generator(engine, model->tokenizer, 8);
  EXPECT_EQ(generator.slots(), 3);
  expect_same(together(generator, requests), expected);
  // Again on the caches the first round left: prompts that share a beginning reuse it.
  const std::vector<Outcome> again = together(generator, requests);
  expect_same(again, expected);
  int reused = 0;
  for (const Outcome& o : again) reused += o.result.reused_tokens;
  EXPECT_GT(reused, 0);
}

// The worker asks a request's `cancelled` before every pass; holding it there keeps one
// request running while the test fills the queue.
TEST(BatchGenerator, FullQueueTurnsAwayAndCloseCancels) {
  const std::string path = testing::temp_path("batch-queue.gguf");
  testing::write_tiny_model(path, {});
  auto model = Model::load(path);
  Engine engine(*model, batch_options(1, 64));
  BatchGenerator generator(engine, model->tokenizer, 1);
  std::atomic<bool> held{true}, asked{false};
  const std::vector<int32_t> prompt = {72, 101};
  SessionRequest first{prompt, 50, {}, {}, [&] {
                         asked = true;
                         while (held) std::this_thread::yield();
                         return false;
                       }};
  auto running = generator.submit(first);
  ASSERT_TRUE(running);
  while (!asked) std::this_thread::yield();
  EXPECT_EQ(generator.running(), 1);
  auto waiting = generator.submit({prompt, 5, {}, {}});
  ASSERT_TRUE(waiting);
  EXPECT_EQ(generator.waiting(), 1);
  EXPECT_FALSE(generator.submit({prompt, 5, {}, {}}));  // one running, one waiting: full
  generator.close();
  EXPECT_FALSE(generator.submit({prompt, 5, {}, {}}));
  held = false;
  std::string text;
  const auto collect = [&](std::string_view piece) { return text += piece, true; };
  EXPECT_EQ(generator.wait(std::move(*running), collect).finish, Finish::Cancelled);
  EXPECT_EQ(generator.wait(std::move(*waiting), collect).finish, Finish::Cancelled);
}

// The real default model with its FFN on flash (streamed sparse reads under a budget, and
// hybrid): the tokens each request gets in shared passes are those it gets alone.
TEST(BatchGenerator, RealModelFromFlashEqualsEachAlone) {
  const std::string gguf =
      std::string(FLASHLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(gguf)) {
    GTEST_SKIP() << "needs models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_models.py)";
  }
  const std::string flm = testing::temp_path("smollm2-batch.flm");
  convert_to_flm(gguf, flm, {.force = true});
  auto model = Model::load(flm);
  const Tokenizer& tok = model->tokenizer;
  const std::vector<Request> requests = {
      {tok.encode("The Elliots of Kellynch Hall were a proud family.", true, false), 24,
       {.temperature = 0}, {}},
      {tok.encode("def fibonacci(n):", true, false), 20, {.temperature = 0}, {}},
      {tok.encode("Once upon a time", true, false), 16, {.temperature = 0.8f, .seed = 7}, {}}};
  for (const auto& [mode, budget] : {std::pair{"auto", "90M"}, std::pair{"hybrid", "110M"}}) {
    const EngineOptions options = batch_options(3, 96, mode, budget);
    const std::vector<Outcome> expected = alone(*model, options, requests);
    Engine engine(*model, options);
    BatchGenerator generator(engine, tok, 4);
    expect_same(together(generator, requests), expected);
  }
}

}  // namespace
}  // namespace flashlm
