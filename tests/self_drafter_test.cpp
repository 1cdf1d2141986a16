// The model drafting for itself with its DRAM-resident neurons (--draft self): the output is
// plain decoding's in every mode that has a resident part, the draft passes leave the target's
// KV cache as they found it and read nothing, and modes with all or none of the FFN in DRAM
// are refused with a clear error.
#include "speculative/self_drafter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "common/error.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "flash/flash_layout.h"
#include "support/generation.h"
#include "support/test_model.h"

namespace flashlm {
namespace {

// Three layers of 256 neurons: a budget can keep any share of them resident.
const testing::TinyModelSpec kSpec{.n_layers = 3, .d_ff = 256, .weight_type = TensorType::Q8_0};

EngineOptions options(const std::string& mode, const std::string& budget = "") {
  return {.threads = 2,
          .context_size = 128,
          .max_batch = 16,
          .all_logits = true,
          .logit_rows = 9,
          .mode = mode,
          .mem_budget = budget};
}

// A budget that keeps about half of the FFN in DRAM in `mode`.
std::string half_the_ffn(const Model& model, const std::string& mode) {
  const MemoryPlan roomy = plan_engine_memory(model, options(mode));
  return std::to_string(roomy.fixed_bytes() + roomy.ffn_bytes / 2);
}

using testing::generate_tokens;
using testing::Generated;

const std::vector<int32_t> kPrompt = {84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114};

TEST(SelfDrafter, StreamedAndHybridEqualPlainDecoding) {
  const testing::TinyFlm m = testing::write_tiny_flm("self-draft", kSpec);
  auto model = Model::load(m.flm);
  for (const std::string mode : {"sparse", "hybrid"}) {
    Engine engine(*model, options(mode, half_the_ffn(*model, mode)));
    const int resident = engine.plan()->resident_neurons_per_layer;
    ASSERT_GT(resident, 0) << mode;
    ASSERT_LT(resident, model->config.d_ff) << mode;
    for (const SamplingParams sampling :
         {SamplingParams{.temperature = 0}, SamplingParams{.temperature = 0.9f, .seed = 3}}) {
      const Generated plain = generate_tokens(engine, kPrompt, 40, sampling, nullptr);
      // A chain; a tree of three candidates at the first position; and that with one and two
      // runners-up beside every later position of the chain (side leaves).
      for (const auto& [width, side] : {std::pair{1, 0}, {3, 0}, {3, 1}, {2, 2}}) {
        SelfDrafter self(engine.transformer(), /*p_min=*/0.0f, /*vocab_rows=*/0, width, side);
        EXPECT_EQ(self.name(), "self");
        const Generated spec = generate_tokens(engine, kPrompt, 40, sampling, &self);
        EXPECT_EQ(spec.tokens, plain.tokens)
            << mode << " temperature " << sampling.temperature << " width " << width
            << " side " << side;
        EXPECT_EQ(spec.n_past, plain.n_past) << mode << " width " << width << " side " << side;
        EXPECT_GT(spec.stats.drafted_tokens, 0) << mode;
        if (width == 3) {
          // Trees were drafted: the runners-up follow the chain, each after the first token.
          const std::vector<int32_t> context(kPrompt.begin(), kPrompt.end());
          engine.transformer().truncate(0);
          engine.transformer().forward(std::span(context).first(context.size() - 1));
          const DraftTree tree = self.draft_tree(context, 4, 6);
          EXPECT_EQ(tree.tokens.size(), 6u);
          EXPECT_EQ(tree.chain_length(), 4);
          EXPECT_FALSE(tree.is_chain());
          EXPECT_EQ(tree.parents, (std::vector<int32_t>{-1, 0, 1, 2, -1, -1}));
          EXPECT_NE(tree.tokens[4], tree.tokens[0]);
          EXPECT_NE(tree.tokens[5], tree.tokens[0]);
          EXPECT_EQ(engine.transformer().n_past(), static_cast<int>(context.size()) - 1);
          EXPECT_EQ(self.draft_tree(context, 4, 4).tokens.size(), 4u);  // no room: a chain
        }
        if (side > 0) {
          // Leaves after the chain, shallowest first: width - 1 after the step's token (-1),
          // then `side` after each chain token but the last, each differing from the chain's
          // token at its position; cut to the room given.
          const std::vector<int32_t> context(kPrompt.begin(), kPrompt.end());
          engine.transformer().truncate(0);
          engine.transformer().forward(std::span(context).first(context.size() - 1));
          const DraftTree tree = self.draft_tree(context, 4, 20);
          std::vector<int32_t> parents = {-1, 0, 1, 2};
          for (int w = 1; w < width; ++w) parents.push_back(-1);
          for (int p = 0; p < 3; ++p) {
            for (int k = 0; k < side; ++k) parents.push_back(p);
          }
          EXPECT_EQ(tree.parents, parents) << "width " << width << " side " << side;
          EXPECT_EQ(tree.chain_length(), 4);
          for (size_t i = 4; i < tree.tokens.size(); ++i) {
            EXPECT_NE(tree.tokens[i], tree.tokens[tree.parents[i] + 1]) << i;
          }
          const DraftTree cut = self.draft_tree(context, 4, 7);
          EXPECT_EQ(cut.tokens, std::vector<int32_t>(tree.tokens.begin(), tree.tokens.begin() + 7));
          EXPECT_EQ(engine.transformer().n_past(), static_cast<int>(context.size()) - 1);
        }
      }
    }
  }
}

// A draft computes the resident neurons alone and reads nothing: its logits differ from the
// full pass's, the streamed and hybrid FFNs (the same first neurons resident) agree on them,
// no byte is read from flash, and the KV cache is as before.
TEST(SelfDrafter, DraftPassesReadNothingAndLeaveTheCache) {
  const testing::TinyFlm m = testing::write_tiny_flm("self-draft-pass", kSpec);
  auto model = Model::load(m.flm);
  Engine streamed(*model, options("sparse", half_the_ffn(*model, "sparse")));
  const int resident = streamed.plan()->resident_neurons_per_layer;
  // Hybrid with the same resident neurons: raise its budget until it keeps as many.
  EngineOptions hybrid_options = options("hybrid");
  const MemoryPlan roomy = plan_engine_memory(*model, hybrid_options);
  const uint64_t per_neuron = roomy.ffn_bytes / model->config.d_ff;
  hybrid_options.mem_budget =
      std::to_string(roomy.fixed_bytes() + per_neuron * resident + per_neuron / 2);
  Engine hybrid(*model, hybrid_options);
  ASSERT_EQ(hybrid.plan()->resident_neurons_per_layer, resident);

  const std::span<const int32_t> context(kPrompt);
  std::vector<float> drafts[2], full;
  Engine* engines[2] = {&streamed, &hybrid};
  for (int e = 0; e < 2; ++e) {
    Transformer& tr = engines[e]->transformer();
    tr.truncate(0);
    tr.forward(context.first(context.size() - 1));
    engines[e]->reset_stats();
    const std::span<const float> guess = tr.forward_resident(context.last(1));
    drafts[e].assign(guess.begin(), guess.end());
    EXPECT_EQ(engines[e]->flash_stats()->bytes_read, 0u) << e;
    // A cut vocabulary: the same logits for the first ids, and only those.
    tr.truncate(static_cast<int>(context.size()) - 1);
    const std::span<const float> cut = tr.forward_resident(context.last(1), 100);
    ASSERT_EQ(cut.size(), 100u);
    EXPECT_TRUE(std::equal(cut.begin(), cut.end(), drafts[e].begin())) << e;
    tr.truncate(static_cast<int>(context.size()) - 1);
    const std::span<const float> real = tr.forward(context.last(1));
    if (e == 0) full.assign(real.begin(), real.end());
  }
  float drafts_apart = 0, from_full = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    drafts_apart = std::max(drafts_apart, std::abs(drafts[0][i] - drafts[1][i]));
    from_full = std::max(from_full, std::abs(drafts[0][i] - full[i]));
  }
  EXPECT_LT(drafts_apart, 1e-4f);
  EXPECT_GT(from_full, 1e-3f);  // the other neurons were left out

  // A draft leaves n_past where it was, and the next pass gives what it gives without one.
  Transformer& tr = streamed.transformer();
  tr.truncate(0);
  tr.forward(context);
  std::vector<int32_t> with_next(kPrompt.begin(), kPrompt.end());
  with_next.push_back(77);
  SelfDrafter self(tr, 0.0f);
  EXPECT_EQ(self.draft(with_next, 5).size(), 5u);
  EXPECT_EQ(tr.n_past(), static_cast<int>(kPrompt.size()));
  const std::span<const float> after = tr.forward(std::span(with_next).last(1));
  const std::vector<float> after_draft(after.begin(), after.end());
  tr.truncate(static_cast<int>(kPrompt.size()));
  const std::span<const float> again = tr.forward(std::span(with_next).last(1));
  EXPECT_TRUE(std::equal(again.begin(), again.end(), after_draft.begin()));
  // A draft vocabulary of the first 60 ids proposes none beyond them.
  tr.truncate(static_cast<int>(kPrompt.size()));
  for (int32_t token : SelfDrafter(tr, 0.0f, 60).draft(with_next, 8)) EXPECT_LT(token, 60);
  EXPECT_EQ(tr.n_past(), static_cast<int>(kPrompt.size()));
  // p_min 1: never sure enough to draft.
  EXPECT_TRUE(SelfDrafter(tr, 1.0f).draft(with_next, 5).empty());
}

TEST(SelfDrafter, RefusedWhereTheFfnIsAllOrNothingInDram) {
  const testing::TinyFlm m = testing::write_tiny_flm("self-draft-refused", kSpec);
  auto gguf = Model::load(m.gguf);
  auto flm = Model::load(m.flm);
  const auto refused = [](Engine& engine, const std::string& says) {
    try {
      SelfDrafter self(engine.transformer(), 0.0f);
      ADD_FAILURE() << "a self draft was built where it should be refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  Engine dense(*gguf, options("dense"));
  refused(dense, "every FFN neuron is in DRAM");
  for (const std::string mode : {"naive", "mmap"}) {
    Engine engine(*flm, options(mode, half_the_ffn(*flm, "hybrid")));
    refused(engine, "keeps none");
  }
  {
    Engine starved(
        *flm, options("sparse",
                      std::to_string(plan_engine_memory(*flm, options("sparse")).fixed_bytes())));
    EXPECT_EQ(starved.plan()->resident_neurons_per_layer, 0);
    refused(starved, "keeps none");
  }
}

}  // namespace
}  // namespace flashlm
