// Speculative decoding against plain decoding: drafts, the draft length, and the generation
// loop, which must give token for token what plain decoding gives (greedy and sampled, on a
// tiny model with drafts right and wrong, and on the real SmolLM2 in every mode).
#include "speculative/draft.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "common/error.h"

#include "engine/engine.h"
#include "engine/generate.h"
#include "flash/loaded_model.h"
#include "flash/flash_layout.h"
#include "speculative/self_drafter.h"
#include "support/generation.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

TEST(NgramDrafter, ContinuesTheLatestEarlierOccurrenceOfTheLongestSuffix) {
  NgramDrafter ngram(2, 4);
  // "1 2 3" occurs at 0 (then 4) and at 5 (then 9): the latest one wins.
  const std::vector<int32_t> context = {1, 2, 3, 4, 7, 1, 2, 3, 9, 8, 1, 2, 3};
  EXPECT_EQ(ngram.draft(context, 3), (std::vector<int32_t>{9, 8, 1}));
  EXPECT_EQ(ngram.draft(context, 1), (std::vector<int32_t>{9}));
  EXPECT_TRUE(ngram.draft(context, 0).empty());
  // The longest suffix that occurs before decides: "5 2 3" does not, "2 3" does (then 9).
  const std::vector<int32_t> shorter = {2, 3, 9, 6, 5, 2, 3};
  EXPECT_EQ(ngram.draft(shorter, 8), (std::vector<int32_t>{9, 6, 5, 2, 3}));
  // Nothing repeats: no draft; a one-token suffix is below min n.
  EXPECT_TRUE(ngram.draft(std::vector<int32_t>{1, 2, 3, 4, 5}, 4).empty());
  EXPECT_TRUE(ngram.draft(std::vector<int32_t>{7, 1, 7}, 4).empty());
  EXPECT_TRUE(ngram.draft(std::vector<int32_t>{}, 4).empty());
}

TEST(DraftSource, NamesAreCheckedWithAClearError) {
  EXPECT_EQ(make_drafter("none"), nullptr);
  EXPECT_EQ(make_drafter(""), nullptr);
  EXPECT_EQ(make_drafter("ngram")->name(), "ngram");
  try {
    make_drafter("medusa");
    FAIL() << "an unknown source was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("supported: ngram"), std::string::npos) << e.what();
  }
}

TEST(DraftLength, LongWhereDraftsAreGoodAndTokensCheapShortOtherwise) {
  // Passes cost 100 ms plus 1 ms a token (flash), drafts nearly always right: draft long.
  DraftLength cheap(8);
  for (int i = 0; i < 40; ++i) {
    const int k = i % 8 + 1;
    cheap.observe(k, k, 0.100 + 0.001 * (1 + k));
  }
  EXPECT_EQ(cheap.next(), 8);
  // Each token costs as much as the pass (compute-bound) and few drafts are right: one.
  DraftLength dear(8);
  for (int i = 0; i < 40; ++i) {
    const int k = i % 8 + 1;
    dear.observe(k, i % 10 == 0 ? 1 : 0, 0.010 * (1 + k));
  }
  EXPECT_EQ(dear.next(), 1);
}

// Drafts that are sometimes the model's own greedy continuation and sometimes not: every path
// of the verification (all accepted, a rejection at each position, no draft) is taken.
class ScriptedDrafter : public Drafter {
 public:
  explicit ScriptedDrafter(std::vector<int32_t> truth) : truth_(std::move(truth)) {}
  std::vector<int32_t> draft(std::span<const int32_t> context, int max_tokens) override {
    ++calls_;
    std::vector<int32_t> out;
    const size_t at = context.size() - prompt_;
    for (int i = 0; i < max_tokens && at + i < truth_.size(); ++i) {
      const bool wrong = (calls_ % 3 == 1 && i == calls_ % 4) || calls_ % 5 == 0;
      out.push_back(wrong ? (truth_[at + i] + 1) % testing::kTinyVocab : truth_[at + i]);
    }
    if (calls_ % 7 == 0) out.clear();
    return out;
  }
  std::string name() const override { return "scripted"; }
  size_t prompt_ = 0;

 private:
  std::vector<int32_t> truth_;
  int calls_ = 0;
};

// Trees whose chain is wrong from its first token on and whose right continuation is an
// alternative with a child of its own (or, every fourth call, a wrong alternative too): every
// accepted token comes through the tree's other branch, whose cache rows are moved into place.
class ScriptedTreeDrafter : public Drafter {
 public:
  explicit ScriptedTreeDrafter(std::vector<int32_t> truth) : truth_(std::move(truth)) {}
  std::vector<int32_t> draft(std::span<const int32_t>, int) override { return {}; }
  DraftTree draft_tree(std::span<const int32_t> context, int, int max_total) override {
    ++calls_;
    const size_t at = context.size() - prompt_;
    if (max_total < 4 || at + 1 >= truth_.size()) return {};
    const auto wrong = [](int32_t t) { return (t + 1) % testing::kTinyVocab; };
    const int32_t right = calls_ % 4 == 0 ? wrong(wrong(truth_[at])) : truth_[at];
    // [wrong, wrong's child, right, right's child]
    return {{wrong(truth_[at]), truth_[at + 1], right, truth_[at + 1]}, {-1, 0, -1, 2}};
  }
  std::string name() const override { return "scripted tree"; }
  size_t prompt_ = 0;

 private:
  std::vector<int32_t> truth_;
  int calls_ = 0;
};

using testing::generate_tokens;
using testing::Generated;

EngineOptions speculative_options(const std::string& mode = "dense", const std::string& budget = "",
                                  int context = 128) {
  return {.threads = 2, .context_size = context, .max_batch = 16, .all_logits = true,
          .logit_rows = 9, .mode = mode, .mem_budget = budget};
}

TEST(Speculative, EqualsPlainDecodingWithDraftsRightAndWrong) {
  const std::string path = testing::temp_path("speculative.gguf");
  testing::write_tiny_model(path, {.weight_type = TensorType::Q8_0});
  auto model = Model::load(path);
  Engine engine(*model, speculative_options());
  const std::vector<int32_t> prompt = {72, 101, 108, 108, 111, 44, 32, 119};
  for (const SamplingParams sampling :
       {SamplingParams{.temperature = 0}, SamplingParams{.temperature = 0.9f, .seed = 3},
        SamplingParams{.temperature = 1.5f, .top_k = 0, .top_p = 1.0f, .seed = 11}}) {
    const Generated plain = generate_tokens(engine, prompt, 60, sampling, nullptr);
    ScriptedDrafter scripted(plain.tokens);
    scripted.prompt_ = prompt.size();
    const Generated spec = generate_tokens(engine, prompt, 60, sampling, &scripted);
    EXPECT_EQ(spec.tokens, plain.tokens) << "temperature " << sampling.temperature;
    // What the KV cache holds at the end is what plain decoding fed: the prompt and all but
    // the last generated token.
    EXPECT_EQ(spec.n_past, plain.n_past);
    EXPECT_GT(spec.stats.accepted_tokens, 0);
    EXPECT_LT(spec.stats.accepted_tokens, spec.stats.drafted_tokens);
    EXPECT_LT(spec.stats.decode_passes, plain.stats.decode_passes);
    NgramDrafter ngram;
    EXPECT_EQ(generate_tokens(engine, prompt, 60, sampling, &ngram).tokens,
              plain.tokens);
    if (sampling.temperature == 0) {
      ScriptedTreeDrafter trees(plain.tokens);
      trees.prompt_ = prompt.size();
      const Generated treed = generate_tokens(engine, prompt, 60, sampling, &trees);
      EXPECT_EQ(treed.tokens, plain.tokens);
      EXPECT_EQ(treed.n_past, plain.n_past);
      EXPECT_GT(treed.stats.accepted_tokens, 0);  // all through the second branch
      EXPECT_GT(treed.stats.tokens_per_pass(), 1.5);
    }
  }
}

TEST(Speculative, StopsWhereTheCallerSaysAndKeepsTheCacheConsistent) {
  const std::string path = testing::temp_path("speculative-stop.gguf");
  testing::write_tiny_model(path, {});
  auto model = Model::load(path);
  Engine engine(*model, speculative_options());
  const std::vector<int32_t> prompt = {72, 101, 108, 108, 111};
  const Generated plain = generate_tokens(engine, prompt, 30, {.temperature = 0}, nullptr);
  for (int stop_after : {1, 2, 5, 13}) {
    ScriptedDrafter scripted(plain.tokens);
    scripted.prompt_ = prompt.size();
    ScriptedTreeDrafter trees(plain.tokens);
    trees.prompt_ = prompt.size();
    for (Drafter* drafter : std::initializer_list<Drafter*>{&scripted, &trees}) {
      Transformer& tr = engine.transformer();
      tr.truncate(0);
      Sampler greedy({.temperature = 0});
      std::vector<int32_t> got;
      generate(
          tr, greedy, model->tokenizer, prompt, 30,
          [&](int32_t t) { return got.push_back(t), static_cast<int>(got.size()) < stop_after; },
          {}, {.drafter = drafter, .max_tokens = 6, .stop_at_end_of_generation = false});
      ASSERT_EQ(got, std::vector<int32_t>(plain.tokens.begin(), plain.tokens.begin() + stop_after))
          << drafter->name();
      // Plain decoding would have fed every token but the last one it generated.
      EXPECT_EQ(tr.n_past(), static_cast<int>(prompt.size()) + stop_after - 1) << drafter->name();
    }
  }
}

// The real default model in every mode under a budget that puts the FFN on flash; ngram
// drafts on a greedy continuation of real text (the model repeats itself, so drafts are taken),
// and self drafts in hybrid and streamed modes with resident neurons.
TEST(Speculative, RealModelEveryModeEqualsPlainDecoding) {
  const std::string gguf = std::string(FLASHLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(gguf)) {
    GTEST_SKIP() << "needs models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_models.py)";
  }
  const std::string flm = testing::temp_path("smollm2-speculative.flm");
  convert_to_flm(gguf, flm, {.force = true});
  auto dense_model = Model::load(gguf);
  auto flash_model = Model::load(flm);
  const std::string text =
      "The Elliots of Kellynch Hall were a proud family. Sir Walter Elliot, of Kellynch Hall, "
      "in Somersetshire, was a man who, for his own amusement, never took up any book but the "
      "Baronetage. The Elliots of Kellynch Hall";
  const std::vector<int32_t> prompt = dense_model->tokenizer.encode(text, false, false);
  struct Case {
    const Model* model;
    std::string mode, budget;
  };
  const std::vector<Case> cases = {{dense_model.get(), "dense", ""},
                                   {flash_model.get(), "hybrid", "110M"},
                                   {flash_model.get(), "naive", "110M"},
                                   {flash_model.get(), "mmap", "110M"},
                                   {flash_model.get(), "auto", "80M"},   // sparse, streamed
                                   {flash_model.get(), "auto", "110M"}};  // and some resident
  for (const Case& c : cases) {
    Engine engine(*c.model, speculative_options(c.mode, c.budget, 256));
    for (const SamplingParams sampling :
         {SamplingParams{.temperature = 0}, SamplingParams{.temperature = 0.8f, .seed = 5}}) {
      const Generated plain = generate_tokens(engine, prompt, 40, sampling, nullptr);
      NgramDrafter ngram;
      const Generated spec = generate_tokens(engine, prompt, 40, sampling, &ngram, 8);
      EXPECT_EQ(spec.tokens, plain.tokens) << c.mode << " temperature " << sampling.temperature;
      if (sampling.temperature == 0) {
        EXPECT_GT(spec.stats.accepted_tokens, 0) << c.mode;
      }
      // The model drafting for itself where the mode keeps part of the FFN in DRAM.
      if (c.mode == "hybrid" || (c.mode == "auto" && c.budget == "110M")) {
        SelfDrafter self(engine.transformer(), 0.0f);
        const Generated drafted =
            generate_tokens(engine, prompt, 40, sampling, &self, 8);
        EXPECT_EQ(drafted.tokens, plain.tokens) << c.mode << " self, temperature "
                                                << sampling.temperature;
        EXPECT_GT(drafted.stats.drafted_tokens, 0) << c.mode;
      }
    }
  }
}

}  // namespace
}  // namespace flashlm
