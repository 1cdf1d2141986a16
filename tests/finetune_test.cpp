// flashlm finetune's parts: the training data (text sequences, chat samples with the loss on
// the assistant turns), a fresh adapter that changes nothing, the training forward against
// the inference engine with the same adapter, and both optimizers lowering the loss.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "common/error.h"
#include "common/thread_pool.h"
#include "engine/engine.h"
#include "flash/loaded_model.h"
#include "model/weight_pager.h"
#include "support/test_model.h"
#include "train/finetune.h"
#include "train/lora_trainer.h"

namespace flashlm {
namespace {

std::unique_ptr<Model> tiny(const std::string& name, uint64_t seed = 3) {
  const std::string path = testing::temp_path(name + ".gguf");
  testing::write_tiny_model(path, {.seed = seed});
  return Model::load(path);
}

const std::string kText =
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
    "surrounding families, that he is considered the rightful property of some one or other of "
    "their daughters.";

TEST(Finetune, TextIsCutIntoSequences) {
  const auto model = tiny("ft-text");
  const std::vector<TrainingSample> s = text_samples(model->tokenizer, kText, 31);
  const size_t tokens = model->tokenizer.encode(kText, false, false).size();
  ASSERT_EQ(s.size(), tokens / 32);  // whole sequences of 32; the tail dropped
  for (const TrainingSample& x : s) {
    EXPECT_EQ(x.tokens.size(), 32u);
    EXPECT_EQ(x.targets(), 31);
  }
  EXPECT_THROW(text_samples(model->tokenizer, "a", 31), Error);
}

TEST(Finetune, ChatSamplesCountOnlyTheAssistantTurns) {
  const auto model = tiny("ft-chat");
  const std::string jsonl =
      R"({"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there"}, {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Hello"}]})"
      "\n\n"
      R"({"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue"}]})"
      "\n";
  const std::vector<TrainingSample> s = chat_samples(model->tokenizer, jsonl, 512);
  ASSERT_EQ(s.size(), 2u);
  // The counted targets, decoded: the assistant's words and the end of its turn, nothing else.
  std::string learned;
  for (size_t i = 0; i < s[0].mask.size(); ++i) {
    if (s[0].mask[i] != 0) learned += model->tokenizer.token_piece(s[0].tokens[i + 1]);
  }
  EXPECT_NE(learned.find("Hi there"), std::string::npos) << learned;
  EXPECT_NE(learned.find("Hello"), std::string::npos) << learned;
  EXPECT_EQ(learned.find("Say hi"), std::string::npos) << learned;
  EXPECT_EQ(learned.find("Again"), std::string::npos) << learned;
  auto error = [&](const std::string& data) {
    try {
      chat_samples(model->tokenizer, data, 512);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(error("{\"messages\": [}\n").find("line 1"), std::string::npos);
  EXPECT_NE(error(R"({"messages": [{"role": "user", "content": "x"}]})").find("no assistant"), std::string::npos);
  EXPECT_NE(error(R"({"messages": [{"role": "robot", "content": "x"}]})").find("role 'robot'"), std::string::npos);
}

TEST(Finetune, AFreshAdapterChangesNothing) {
  const auto model = tiny("ft-fresh");
  const LoraAdapter a = new_adapter(model->config, 4, 8, parse_lora_targets("all"), 1);
  const std::string path = testing::temp_path("fresh.lora.gguf");
  a.save(path);
  const std::vector<int32_t> prompt = {72, 101, 108, 108, 111};
  Engine base(*model, {.threads = 1});
  Engine adapted(*model, {.threads = 1, .lora = {{path, 1.0f}}});
  const auto x = base.transformer().forward(prompt);
  const auto y = adapted.transformer().forward(prompt);
  EXPECT_EQ(std::vector<float>(x.begin(), x.end()), std::vector<float>(y.begin(), y.end()));
}

// The training forward (float attention, whole sequence at once) against the inference
// engine with the same adapter (KV cache, token by token): the same next-token losses.
TEST(Finetune, TrainingForwardEqualsInferenceWithTheAdapter) {
  for (const char* arch : {"llama", "qwen2", "gemma3"}) {
    SCOPED_TRACE(arch);
    const std::string path = testing::temp_path(std::string("ft-twin-") + arch + ".gguf");
    testing::write_tiny_model(path, {.architecture = arch, .seed = 5});
    const auto model = Model::load(path);
    LoraAdapter a = new_adapter(model->config, 3, 6, parse_lora_targets("all"), 2);
    for (auto& layer : a.layers) {
      for (LoraPair& p : layer) {
        for (size_t i = 0; i < p.b.size(); ++i) p.b[i] = 0.05f * std::sin(0.3f * i);
      }
    }
    const std::string adapter_path = testing::temp_path(std::string("twin-") + arch + ".lora.gguf");
    a.save(adapter_path);
    const std::vector<int32_t> tokens = {84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114, 111, 119};
    ThreadPool pool(2);
    LoraTrainer trainer(model->config, model->weights, a, 1.0f, pool, 32);
    Engine engine(*model, {.threads = 2, .cache_type_k = "f32", .cache_type_v = "f32",
                           .lora = {{adapter_path, 1.0f}}});
    for (size_t t = 0; t + 1 < tokens.size(); ++t) {
      const auto logits = engine.transformer().forward(std::span(&tokens[t], 1));
      const float m = *std::max_element(logits.begin(), logits.end());
      double s = 0;
      for (float l : logits) s += std::exp(double{l} - m);
      const double nll = m + std::log(s) - logits[tokens[t + 1]];
      std::vector<float> weight(tokens.size() - 1, 0.0f);
      weight[t] = 1;
      EXPECT_NEAR(trainer.loss(tokens, weight), nll, 2e-4 * (1 + nll)) << "target " << t;
    }
  }
}

TEST(Finetune, BothOptimizersLowerTheLoss) {
  const auto model = tiny("ft-train", 9);
  ThreadPool pool(2);
  const std::vector<TrainingSample> train = text_samples(model->tokenizer, kText + kText, 24);
  for (const char* optimizer : {"adamw", "mezo"}) {
    SCOPED_TRACE(optimizer);
    LoraAdapter a = new_adapter(model->config, 4, 8, parse_lora_targets("all"), 4);
    const double before = evaluate_loss(model->config, model->weights, a, train, 0, pool, 32);
    const bool mezo = std::string(optimizer) == "mezo";
    FinetuneOptions o{.steps = mezo ? 60 : 30, .lr = mezo ? 2e-3f : 1e-2f, .warmup = 2,
                      .eval_every = 0, .optimizer = optimizer};
    std::vector<double> losses;
    finetune(model->config, model->weights, a, train, {}, o, pool,
             [&](const StepReport& r) { losses.push_back(r.loss); });
    ASSERT_EQ(losses.size(), static_cast<size_t>(o.steps));
    const double after = evaluate_loss(model->config, model->weights, a, train, 0, pool, 32);
    std::printf("%s: training loss %.4f -> %.4f\n", optimizer, before, after);
    EXPECT_LT(after, before - (mezo ? 0.01 : 0.5));
    // What was trained is what --lora applies.
    const std::string path = testing::temp_path(std::string("trained-") + optimizer + ".gguf");
    a.save(path);
    LoraAdapter loaded = LoraAdapter::load(path, model->config.lora_shapes());
    EXPECT_NEAR(evaluate_loss(model->config, model->weights, loaded, train, 0, pool, 32), after, 1e-6);
  }
}

// Six steps straight, or three, a checkpoint, and three more resumed from it: the same adapter,
// bit for bit (AdamW's moments, the step, the data order and its random state all restored).
TEST(Finetune, ResumingFromACheckpointContinuesExactly) {
  const auto model = tiny("ft-resume", 13);
  ThreadPool pool(2);
  const std::vector<TrainingSample> train = text_samples(model->tokenizer, kText + kText, 16);
  ASSERT_GE(train.size(), 4u);
  for (const char* optimizer : {"adamw", "mezo"}) {
    SCOPED_TRACE(optimizer);
    FinetuneOptions o{.batch = 3, .steps = 6, .lr = 5e-3f, .warmup = 2, .eval_every = 0,
                      .optimizer = optimizer};
    LoraAdapter straight = new_adapter(model->config, 2, 4, parse_lora_targets("attn_q,ffn_down"), 7);
    finetune(model->config, model->weights, straight, train, {}, o, pool, [](const StepReport&) {});

    // The same run stopped during step 4, after step 3's checkpoint was written.
    FinetuneOptions run = o;
    run.checkpoint_every = 3;
    run.checkpoint_path = testing::temp_path(std::string("resume-") + optimizer + ".checkpoint");
    LoraAdapter stopped = new_adapter(model->config, 2, 4, parse_lora_targets("attn_q,ffn_down"), 7);
    struct Stop {};
    try {
      finetune(model->config, model->weights, stopped, train, {}, run, pool, [](const StepReport& r) {
        if (r.step == 4) throw Stop{};
      });
    } catch (const Stop&) {
    }
    LoraAdapter resumed = new_adapter(model->config, 2, 4, parse_lora_targets("attn_q,ffn_down"), 99);
    FinetuneOptions rest = o;
    rest.resume_path = run.checkpoint_path;
    std::vector<int> steps_seen;
    finetune(model->config, model->weights, resumed, train, {}, rest, pool,
             [&](const StepReport& r) { steps_seen.push_back(r.step); });
    EXPECT_EQ(steps_seen, (std::vector<int>{4, 5, 6}));
    for (size_t l = 0; l < straight.layers.size(); ++l) {
      for (int t = 0; t < kLoraTargets; ++t) {
        EXPECT_EQ(resumed.layers[l][t].a, straight.layers[l][t].a);
        EXPECT_EQ(resumed.layers[l][t].b, straight.layers[l][t].b);
      }
    }
  }
}

}  // namespace
}  // namespace flashlm

namespace flashlm {
namespace {

// What this process holds of the mapping that contains `address` (its Rss in smaps).
uint64_t mapping_resident_bytes(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  const uintptr_t at = reinterpret_cast<uintptr_t>(address);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &begin, &end) == 2 && line.find(':') > 8) {
      inside = at >= begin && at < end;
    } else if (inside && line.starts_with("Rss:")) {
      return std::stoull(line.substr(4)) * 1024;
    }
  }
  return 0;
}

// The base weights on flash (a WeightPager): the same loss and gradients to the bit, and the
// layers and the head leave memory once the passes are done with them.
TEST(Finetune, WeightsOnFlashGiveTheSameGradientsAndLeaveMemory) {
  const std::string path = testing::temp_path("ft-pager.gguf");
  testing::write_tiny_model(path, {.d_model = 1024, .d_ff = 1024, .n_heads = 8, .n_kv_heads = 4, .tied_embeddings = false});
  const auto model = Model::load(path);
  const WeightPager pager(*model->file, model->weights);
  ThreadPool pool(2);
  const std::vector<TrainingSample> train = text_samples(model->tokenizer, kText, 24);
  LoraAdapter a = new_adapter(model->config, 4, 8, parse_lora_targets("all"), 5);
  for (auto& layer : a.layers) {
    for (LoraPair& p : layer) {
      for (size_t i = 0; i < p.b.size(); ++i) p.b[i] = 0.02f * std::cos(0.7f * i);
    }
  }
  LoraGradients in_dram = zero_gradients_like(a), on_flash = zero_gradients_like(a);
  LoraTrainer plain(model->config, model->weights, a, 1.0f, pool, 24);
  LoraTrainer paged(model->config, model->weights, a, 1.0f, pool, 24, &pager);
  const double loss = plain.loss(train[0].tokens, train[0].mask, &in_dram);
  const void* mapping = model->weights.output.data;
  const uint64_t all_in = mapping_resident_bytes(mapping);
  uint64_t weights = model->weights.output.bytes() + model->weights.token_embedding.bytes();
  for (const LayerWeights& w : model->weights.layers) {
    weights += w.wq.bytes() + w.wk.bytes() + w.wv.bytes() + w.wo.bytes() + w.ffn_gate.bytes() +
               w.ffn_up.bytes() + w.ffn_down.bytes();
  }
  EXPECT_GE(all_in, weights * 9 / 10);  // the plain pass touched every weight
  EXPECT_EQ(paged.loss(train[0].tokens, train[0].mask, &on_flash), loss);
  for (size_t l = 0; l < a.layers.size(); ++l) {
    for (size_t m = 0; m < a.layers[l].size(); ++m) {
      EXPECT_EQ(on_flash.layers[l][m].a, in_dram.layers[l][m].a) << l << " " << m;
      EXPECT_EQ(on_flash.layers[l][m].b, in_dram.layers[l][m].b) << l << " " << m;
    }
  }
  // Afterwards the process holds the pages that tensors share with their neighbours and the
  // norms: a few pages a tensor, nothing like a layer.
  EXPECT_LT(mapping_resident_bytes(mapping), pager.largest_layer_bytes() / 4);
}

TEST(Finetune, MemoryPlanKeepsTheWeightsInDramWhenTheyFitAndRefusesTooLittle) {
  const std::string path = testing::temp_path("ft-plan.gguf");
  testing::write_tiny_model(path, {.n_layers = 6, .d_model = 256, .d_ff = 1024});
  const auto model = Model::load(path);
  const WeightPager pager(*model->file, model->weights);
  const auto plan = [&](uint64_t budget) {
    return plan_training_memory(model->config, model->weights, pager.largest_layer_bytes(),
                                1000, "adamw", 64, 50 << 20, budget);
  };
  EXPECT_FALSE(plan(1ull << 32).weights_on_flash);
  const TrainingMemory everything = plan(1ull << 32);
  EXPECT_TRUE(plan(everything.total() - 1).weights_on_flash);
  try {
    plan(40 << 20);
    FAIL() << "a budget under the process itself was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("raise --mem-budget"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace flashlm
