// Speculative decoding with a draft model: the output equals plain decoding (greedy and sampled,
// dense and streamed sparse), the draft model's KV cache follows the context through
// rejections, the vocabularies are checked, and the draft's memory counts in the budget.
#include "speculative/model_drafter.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "common/error.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "flash/flash_layout.h"
#include "support/generation.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

using testing::generate_tokens;
using testing::Generated;

EngineOptions options(const std::string& mode = "dense", const std::string& budget = "",
                      int context = 128) {
  return {.threads = 2, .context_size = context, .max_batch = 16, .all_logits = true,
          .logit_rows = 7, .mode = mode, .mem_budget = budget};
}

std::unique_ptr<Model> tiny(const std::string& name, const testing::TinyModelSpec& spec) {
  const std::string path = testing::temp_path(name);
  testing::write_tiny_model(path, spec);
  return Model::load(path);
}

const std::vector<SamplingParams> kSamplings = {
    {.temperature = 0}, {.temperature = 0.9f, .seed = 3},
    {.temperature = 1.5f, .top_k = 0, .top_p = 1.0f, .seed = 11}};

// A generated target and a smaller generated draft with the same vocabulary (its guesses
// mostly wrong), and the target as its own draft (its guesses right where greedy): every
// verification path, and the output always plain decoding's.
TEST(ModelDrafter, GeneratedDraftEqualsPlainDecoding) {
  auto target = tiny("draft-target.gguf", {.weight_type = TensorType::Q8_0});
  const EngineOptions o = options();
  Engine engine(*target, o);
  const std::vector<int32_t> prompt = {72, 101, 108, 108, 111, 44, 32, 119};
  for (const testing::TinyModelSpec& draft_spec :
       {testing::TinyModelSpec{.n_layers = 1, .d_ff = 64, .seed = 7},
        testing::TinyModelSpec{.weight_type = TensorType::Q8_0}}) {
    for (const SamplingParams& sampling : kSamplings) {
      const Generated plain = generate_tokens(engine, prompt, 50, sampling, nullptr);
      ModelDrafter drafter(tiny("draft-" + std::to_string(draft_spec.seed) + ".gguf", draft_spec),
                           *target, engine.pool(),
                           draft_transformer_options(o), /*p_min=*/0.0f);
      const Generated spec = generate_tokens(engine, prompt, 50, sampling, &drafter);
      EXPECT_EQ(spec.tokens, plain.tokens)
          << "draft seed " << draft_spec.seed << ", temperature " << sampling.temperature;
      EXPECT_GT(spec.stats.drafted_tokens, 0);
      if (draft_spec.seed == 7) {
        EXPECT_LT(spec.stats.accepted_tokens, spec.stats.drafted_tokens);
      }
      if (draft_spec.seed == 1 && sampling.temperature == 0) {
        // The target drafting for itself, greedy: every draft is right.
        EXPECT_EQ(spec.stats.accepted_tokens, spec.stats.drafted_tokens);
        EXPECT_GT(spec.stats.tokens_per_pass(), 1.5);
      }
    }
  }
}

// After a rejection the KV cache keeps the common prefix and feeds the rest: the drafts are
// those of a fresh drafter on the same context, and so after a context that shrinks.
TEST(ModelDrafter, DraftsAfterARejectionEqualAFreshDrafters) {
  auto target = tiny("rollback-target.gguf", {});
  const EngineOptions o = options();
  ThreadPool pool(2);
  const std::string draft_path = testing::temp_path("rollback-draft.gguf");
  testing::write_tiny_model(draft_path, {.n_layers = 1, .seed = 5});
  const auto fresh = [&](float p_min = 0.0f) {
    return ModelDrafter(Model::load(draft_path), *target, pool, draft_transformer_options(o),
                        p_min);
  };
  ModelDrafter drafter = fresh();
  std::vector<int32_t> context = {72, 101, 108, 108, 111, 44, 32, 119, 111, 114};
  drafter.prefill(context);
  const std::vector<int32_t> first = drafter.draft(context, 6);
  ASSERT_EQ(first.size(), 6u);
  EXPECT_EQ(first, fresh().draft(context, 6));
  // Two drafts accepted, the third replaced by the target's token, then a bonus-free step.
  context.insert(context.end(), first.begin(), first.begin() + 2);
  context.push_back((first[2] + 1) % testing::kTinyVocab);
  EXPECT_EQ(drafter.draft(context, 5), fresh().draft(context, 5));
  // All six accepted and one more token: the last draft was never fed.
  const std::vector<int32_t> second = drafter.draft(context, 4);
  context.insert(context.end(), second.begin(), second.end());
  context.push_back(33);
  EXPECT_EQ(drafter.draft(context, 6), fresh().draft(context, 6));
  // A new conversation sharing only a few tokens, and a context the cache holds entirely.
  std::vector<int32_t> other(context.begin(), context.begin() + 3);
  other.insert(other.end(), {50, 60, 70});
  EXPECT_EQ(drafter.draft(other, 6), fresh().draft(other, 6));
  EXPECT_EQ(drafter.draft(other, 6), fresh().draft(other, 6));
  // A prefill of a context the cache already holds (the server's second look at a prompt)
  // feeds nothing and changes nothing.
  drafter.prefill(other);
  drafter.prefill(other);
  EXPECT_EQ(drafter.draft(other, 6), fresh().draft(other, 6));
  // p_min: the drafts stop before the first token the draft model is less sure of.
  ModelDrafter cautious = fresh(0.05f);
  const std::vector<int32_t> all = drafter.draft(other, 8);
  const std::vector<int32_t> some = cautious.draft(other, 8);
  ASSERT_LE(some.size(), all.size());
  EXPECT_TRUE(std::equal(some.begin(), some.end(), all.begin()));
  ModelDrafter certain = fresh(1.0f);
  EXPECT_TRUE(certain.draft(other, 8).empty());
}

TEST(ModelDrafter, VocabulariesMustMatchWithAClearError) {
  auto target = tiny("vocab-target.gguf", {});
  ThreadPool pool(1);
  const TransformerOptions t = draft_transformer_options(options());
  auto renamed = tiny("vocab-renamed.gguf", {.end_of_text = "<|end|>"});
  try {
    ModelDrafter(std::move(renamed), *target, pool, t, 0.75f);
    FAIL() << "a draft with another vocabulary was accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("vocab-renamed.gguf"), std::string::npos) << m;
    EXPECT_NE(m.find("vocab-target.gguf"), std::string::npos) << m;
    EXPECT_NE(m.find("token 256 is '<|end|>' in the draft and '<|endoftext|>'"),
              std::string::npos)
        << m;
  }
  // Padding to more rows is not a difference; more tokens are.
  EXPECT_NO_THROW(ModelDrafter(tiny("vocab-padded.gguf", {.padding_tokens = 13}), *target, pool, t,
                               0.75f));
  auto target_model = tiny("vocab-target-2.gguf", {});
  auto bigger = tiny("vocab-bigger.gguf", {.padding_tokens = 2});
  EXPECT_NO_THROW(check_same_vocabulary(*bigger, *target_model));
  const std::string gguf =
      std::string(FLASHLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (std::filesystem::exists(gguf)) {
    auto smollm = Model::load(gguf);
    try {
      check_same_vocabulary(*smollm, *target_model);
      FAIL() << "SmolLM2's vocabulary was taken for the tiny model's";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("49152 tokens"), std::string::npos) << e.what();
    }
  }
}

// SmolLM2 drafting for itself, dense and streamed sparse from a .flm, with the draft model's
// memory inside the budget: the same tokens as plain decoding, greedy and sampled.
TEST(ModelDrafter, RealModelDenseAndStreamedSparseEqualPlainDecoding) {
  const std::string gguf =
      std::string(FLASHLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(gguf)) {
    GTEST_SKIP() << "needs models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_models.py)";
  }
  const std::string flm = testing::temp_path("smollm2-model-draft.flm");
  convert_to_flm(gguf, flm, {.force = true});
  auto dense_model = Model::load(gguf);
  auto flash_model = Model::load(flm);
  const std::vector<int32_t> prompt = dense_model->tokenizer.encode(
      "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his own "
      "amusement, never took up any book but the Baronetage",
      false, false);
  for (const bool sparse : {false, true}) {
    const Model& model = sparse ? *flash_model : *dense_model;
    EngineOptions o = options();
    o.context_size = 256;
    o.draft_model_bytes = draft_model_bytes(*Model::load(gguf), o);
    if (sparse) {
      // What runs streamed sparse without a draft (with room for this test process, which
      // holds three models' metadata), plus what the draft holds: most of the FFN on flash.
      o.mode = "sparse";
      o.sparse_reads = "streamed";
      o.mem_budget = std::to_string((110ull << 20) + o.draft_model_bytes);
    }
    Engine engine(model, o);
    ASSERT_TRUE(engine.plan()->working.draft_model > 0);
    EXPECT_NE(engine.plan()->describe().find("draft model:"), std::string::npos);
    for (const SamplingParams sampling :
         {SamplingParams{.temperature = 0}, SamplingParams{.temperature = 0.8f, .seed = 5}}) {
      const Generated plain = generate_tokens(engine, prompt, 32, sampling, nullptr);
      // p_min 0: SmolLM2 is rarely 75% sure of its next token, and every draft is wanted here.
      ModelDrafter drafter(Model::load(gguf), model, engine.pool(), draft_transformer_options(o),
                           0.0f);
      const Generated spec = generate_tokens(engine, prompt, 32, sampling, &drafter);
      EXPECT_EQ(spec.tokens, plain.tokens) << (sparse ? "sparse" : "dense") << " temperature "
                                           << sampling.temperature;
      EXPECT_GT(spec.stats.accepted_tokens, 0);
      if (sampling.temperature == 0) {
        EXPECT_GT(spec.stats.tokens_per_pass(), 1.5);
      }
    }
  }
  // The budget that held the model alone does not hold the draft too: refused, naming it.
  EngineOptions o = options("sparse", "80M", 256);
  o.sparse_reads = "streamed";
  o.draft_model_bytes = draft_model_bytes(*dense_model, o);
  try {
    plan_engine_memory(*flash_model, o);
    FAIL() << "a budget without room for the draft model was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("draft model"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace flashlm
