#include "train/finetune.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cmath>
#include <numeric>
#include <random>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <sstream>

#include "common/adam.h"
#include "common/error.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "loss/cross_entropy.h"
#include "model/weight_pager.h"
#include "train/lora_trainer.h"

namespace flashlm {

int64_t TrainingSample::targets() const {
  int64_t n = 0;
  for (float m : mask) n += m != 0.0f;
  return n;
}

std::vector<TrainingSample> text_samples(const Tokenizer& tokenizer, std::string_view text,
                                         int seq_len) {
  if (seq_len < 1) fail("the sequence length (-c) must be at least 1 (got {})", seq_len);
  const std::vector<int32_t> tokens = tokenizer.encode(text, false, false);
  std::vector<TrainingSample> out;
  const size_t len = static_cast<size_t>(seq_len) + 1;
  for (size_t start = 0; start + 1 < tokens.size(); start += len) {
    const size_t end = std::min(tokens.size(), start + len);
    if (end - start < len && !out.empty()) break;  // a short tail
    TrainingSample s;
    s.tokens.assign(tokens.begin() + static_cast<int64_t>(start), tokens.begin() + static_cast<int64_t>(end));
    if (tokenizer.add_bos()) s.tokens[0] = tokenizer.bos_id();
    s.mask.assign(s.tokens.size() - 1, 1.0f);
    out.push_back(std::move(s));
  }
  if (out.empty()) fail("the training text gives {} tokens: too few for one sequence", tokens.size());
  return out;
}

std::vector<TrainingSample> chat_samples(const Tokenizer& tokenizer, std::string_view jsonl,
                                         int seq_len) {
  std::vector<TrainingSample> out;
  size_t line_start = 0;
  int line_number = 0;
  while (line_start < jsonl.size()) {
    size_t line_end = jsonl.find('\n', line_start);
    if (line_end == std::string_view::npos) line_end = jsonl.size();
    const std::string_view line = jsonl.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    std::vector<ChatMessage> messages;
    try {
      const nlohmann::json j = nlohmann::json::parse(line);
      for (const auto& m : j.at("messages")) {
        messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
      }
    } catch (const nlohmann::json::exception& e) {
      fail("line {} of the chat data is not a {{\"messages\": [{{\"role\": ..., \"content\": ...}}]}} "
           "object: {}",
           line_number, e.what());
    }
    bool any_assistant = false;
    for (const ChatMessage& m : messages) {
      if (m.role != "system" && m.role != "user" && m.role != "assistant") {
        fail("line {}: role '{}'; the roles are system, user and assistant", line_number, m.role);
      }
      any_assistant |= m.role == "assistant";
    }
    if (!any_assistant) fail("line {} has no assistant message to learn from", line_number);
    const std::vector<int32_t> tokens = tokenizer.encode(
        apply_chat_template(tokenizer, messages, false), tokenizer.add_bos(), true);
    TrainingSample s;
    s.tokens = tokens;
    s.mask.assign(tokens.size() > 0 ? tokens.size() - 1 : 0, 0.0f);
    // Each assistant turn: from the end of its prompt (the conversation before it with the
    // generation prompt) to the end of the conversation through it.
    for (size_t i = 0; i < messages.size(); ++i) {
      if (messages[i].role != "assistant") continue;
      const std::span<const ChatMessage> before(messages.data(), i), through(messages.data(), i + 1);
      const size_t begin = tokenizer.encode(apply_chat_template(tokenizer, before, true), tokenizer.add_bos(), true).size();
      const size_t end = std::min(tokens.size(), tokenizer.encode(apply_chat_template(tokenizer, through, false), tokenizer.add_bos(), true).size());
      for (size_t p = std::max<size_t>(begin, 1); p < end; ++p) s.mask[p - 1] = 1.0f;
    }
    if (static_cast<int64_t>(s.tokens.size()) > seq_len + 1) {
      s.tokens.resize(static_cast<size_t>(seq_len) + 1);
      s.mask.resize(static_cast<size_t>(seq_len));
    }
    if (s.tokens.size() >= 2 && s.targets() > 0) out.push_back(std::move(s));
  }
  if (out.empty()) fail("the chat data holds no sample with an assistant turn inside -c tokens");
  return out;
}

LoraAdapter new_adapter(const ModelConfig& config, int rank, float alpha,
                        const std::vector<LoraTarget>& targets, uint64_t seed) {
  if (rank < 1) fail("--lora-rank must be at least 1 (got {})", rank);
  LoraAdapter a;
  a.architecture = config.architecture;
  a.alpha = alpha;
  a.layers.resize(config.n_layers);
  std::mt19937_64 rng(seed);
  for (int l = 0; l < config.n_layers; ++l) {
    for (LoraTarget t : targets) {
      if (t == LoraTarget::FfnGate && !config.ffn_gated) continue;
      LoraPair& p = a.pair(l, t);
      p.in = lora_target_cols(config.lora_shapes(), t);
      p.out = lora_target_rows(config.lora_shapes(), t);
      if (rank > std::min(p.in, p.out)) {
        fail("--lora-rank {} is larger than {}'s smaller side ({})", rank, lora_target_name(t),
             std::min(p.in, p.out));
      }
      p.rank = rank;
      const float bound = 1.0f / std::sqrt(static_cast<float>(p.in));
      std::uniform_real_distribution<float> u(-bound, bound);
      p.a.resize(static_cast<size_t>(p.rank * p.in));
      for (float& v : p.a) v = u(rng);
      p.b.assign(static_cast<size_t>(p.out * p.rank), 0.0f);
    }
  }
  return a;
}

namespace {

// theta += scale * z for every adapter value, z ~ N(0, 1) drawn from `seed` in a fixed order.
void perturb(LoraAdapter& adapter, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& layer : adapter.layers) {
    for (LoraPair& p : layer) {
      for (float& v : p.a) v += scale * normal(rng);
      for (float& v : p.b) v += scale * normal(rng);
    }
  }
}

// The training state: the adapter, each matrix's AdamW moments, and where the loop stands.
struct TrainingState {
  int step = 0;  // steps done
  std::vector<size_t> order;
  size_t next = 0;
  std::mt19937_64 rng;
};

std::span<const uint8_t> float_bytes(const std::vector<float>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)};
}

void save_checkpoint(const std::string& path, const LoraAdapter& adapter,
                     const std::vector<AdamW>& adam, const TrainingState& state,
                     const FinetuneOptions& o) {
  GgufWriter w;
  w.add_string("general.type", "flashlm-finetune-checkpoint");
  w.add_string("general.architecture", adapter.architecture);
  w.add_float32("adapter.lora.alpha", adapter.alpha);
  w.add_string("finetune.optimizer", o.optimizer);
  w.add_uint64("finetune.step", static_cast<uint64_t>(state.step));
  w.add_uint64("finetune.next", state.next);
  w.add_uint64_array("finetune.order", std::vector<uint64_t>(state.order.begin(), state.order.end()));
  std::ostringstream rng;
  rng << state.rng;
  w.add_string("finetune.rng", rng.str());
  size_t k = 0;
  for (size_t l = 0; l < adapter.layers.size(); ++l) {
    for (int t = 0; t < kLoraTargets; ++t) {
      const LoraPair& p = adapter.layers[l][t];
      if (p.empty()) continue;
      const std::string base = lora_base_tensor_name(static_cast<int>(l), static_cast<LoraTarget>(t));
      w.add_tensor_view(base + ".lora_a", TensorType::F32, {p.in, p.rank}, float_bytes(p.a));
      w.add_tensor_view(base + ".lora_b", TensorType::F32, {p.rank, p.out}, float_bytes(p.b));
      for (const char* which : {".lora_a", ".lora_b"}) {
        if (k >= adam.size()) continue;  // MeZO keeps no moments
        const AdamW& a = adam[k++];
        const int64_t n = static_cast<int64_t>(a.m.size());
        w.add_tensor_view(base + which + ".adam_m", TensorType::F32, {n}, float_bytes(a.m));
        w.add_tensor_view(base + which + ".adam_v", TensorType::F32, {n}, float_bytes(a.v));
      }
    }
  }
  const std::string tmp = path + ".tmp";
  w.write(tmp);
  std::filesystem::rename(tmp, path);
}

void load_checkpoint(const std::string& path, LoraAdapter& adapter, std::vector<AdamW>& adam,
                     TrainingState& state, const FinetuneOptions& o) {
  const std::unique_ptr<GgufFile> f = GgufFile::open(path);
  if (f->find_string("general.type").value_or("") != "flashlm-finetune-checkpoint") {
    fail("{} is not a flashlm finetune checkpoint (--checkpoint-every writes them)", path);
  }
  if (f->find_string("finetune.optimizer").value_or("") != o.optimizer) {
    fail("{} was written by --optimizer {}, not {}", path,
         f->find_string("finetune.optimizer").value_or("?"), o.optimizer);
  }
  state.step = static_cast<int>(f->get_uint("finetune.step"));
  state.next = f->get_uint("finetune.next");
  const std::vector<int64_t> order = f->get_int_array("finetune.order");
  if (order.size() != state.order.size() || state.next > order.size()) {
    fail("{} was trained on {} sequences; this data gives {}: resume with the same data and -c",
         path, order.size(), state.order.size());
  }
  for (size_t i = 0; i < order.size(); ++i) {
    if (order[i] < 0 || static_cast<size_t>(order[i]) >= order.size()) fail("{}: a corrupt data order", path);
    state.order[i] = static_cast<size_t>(order[i]);
  }
  std::istringstream rng(f->get_string("finetune.rng"));
  rng >> state.rng;
  if (!rng) fail("{}: a corrupt random state", path);
  auto read = [&](const std::string& name, std::vector<float>& out) {
    const GgufTensor* t = f->find_tensor(name);
    if (!t || t->type != TensorType::F32 || static_cast<size_t>(t->elements()) != out.size()) {
      fail("{}: tensor {} is missing or not the shape this adapter has (resume with the same "
           "--lora-rank and --lora-modules)",
           path, name);
    }
    const std::span<const uint8_t> data = f->tensor_data(*t);
    std::memcpy(out.data(), data.data(), out.size() * sizeof(float));
  };
  size_t k = 0;
  for (size_t l = 0; l < adapter.layers.size(); ++l) {
    for (int t = 0; t < kLoraTargets; ++t) {
      LoraPair& p = adapter.layers[l][t];
      if (p.empty()) continue;
      const std::string base = lora_base_tensor_name(static_cast<int>(l), static_cast<LoraTarget>(t));
      read(base + ".lora_a", p.a);
      read(base + ".lora_b", p.b);
      for (const char* which : {".lora_a", ".lora_b"}) {
        if (k >= adam.size()) continue;
        AdamW& a = adam[k++];
        read(base + which + ".adam_m", a.m);
        read(base + which + ".adam_v", a.v);
      }
    }
  }
}

}  // namespace

float learning_rate(const FinetuneOptions& o, int step) {
  if (o.warmup > 0 && step <= o.warmup) return o.lr * static_cast<float>(step) / o.warmup;
  const int decay_steps = std::max(1, o.steps - o.warmup);
  const double progress = std::min(1.0, static_cast<double>(step - o.warmup) / decay_steps);
  const double cosine = 0.5 * (1 + std::cos(M_PI * progress));
  return static_cast<float>(o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * cosine));
}

int longest_sequence(const std::vector<TrainingSample>& train,
                     const std::vector<TrainingSample>& eval) {
  int most = 2;
  for (const auto* set : {&train, &eval}) {
    for (const TrainingSample& s : *set) {
      most = std::max<int>(most, static_cast<int>(s.tokens.size()) - 1);
    }
  }
  return most;
}

std::string TrainingMemory::describe(uint64_t budget) const {
  const auto mib = [](uint64_t b) { return static_cast<double>(b) / (1 << 20); };
  return fmt::format(
      "training memory: {:.1f} of the {:.1f} MiB budget: base weights {:.1f} MiB ({}), adapter "
      "state {:.1f} MiB, activations {:.1f} MiB, the process itself {:.1f} MiB, reserve {:.1f} "
      "MiB",
      mib(total()), mib(budget), mib(weights),
      weights_on_flash ? "on flash: two layers and two tiles of the head in DRAM at a time"
                       : "all in DRAM",
      mib(adapter), mib(activations), mib(process), mib(reserve));
}

TrainingMemory plan_training_memory(const ModelConfig& config, const ModelWeights& weights,
                                    uint64_t largest_layer_bytes, int64_t adapter_parameters,
                                    const std::string& optimizer, int max_tokens,
                                    uint64_t process_bytes, uint64_t budget) {
  TrainingMemory m;
  m.process = process_bytes;
  const uint64_t floats_per_parameter = optimizer == "mezo" ? 1 : 4;
  m.adapter = static_cast<uint64_t>(adapter_parameters) * floats_per_parameter * sizeof(float);
  const TiledLossOptions loss;
  m.activations = LoraTrainer::scratch_bytes(config, max_tokens) +
                  tiled_loss_scratch_bytes(weights.output, max_tokens, loss);
  uint64_t all_weights = weights.output.bytes() + weights.token_embedding.bytes();
  for (const LayerWeights& w : weights.layers) all_weights += WeightPager::layer_bytes(w);
  const uint64_t tile = static_cast<uint64_t>(std::min<int64_t>(loss.tile, weights.output.rows));
  m.weights = all_weights;
  m.reserve = (9ull << 20) + (m.adapter + m.activations) / 64;
  if (m.total() <= budget) return m;
  m.weights_on_flash = true;
  m.weights = 2 * largest_layer_bytes + 2 * tile * weights.output.row_bytes;
  if (m.total() > budget) {
    fail("the memory budget of {:.1f} MiB is too small to fine-tune this model: it needs at "
         "least {:.1f} MiB with the base weights on flash ({}); raise --mem-budget, or pass a "
         "smaller -c, --lora-rank or --lora-modules",
         static_cast<double>(budget) / (1 << 20), static_cast<double>(m.total()) / (1 << 20),
         m.describe(budget));
  }
  return m;
}

namespace {

double mean_loss(LoraTrainer& trainer, const std::vector<TrainingSample>& samples, int limit) {
  double total = 0;
  int64_t count = 0;
  const size_t n = limit > 0 ? std::min<size_t>(samples.size(), limit) : samples.size();
  for (size_t i = 0; i < n; ++i) {
    total += trainer.loss(samples[i].tokens, samples[i].mask);
    count += samples[i].targets();
  }
  return count > 0 ? total / static_cast<double>(count) : 0.0;
}

}  // namespace

double evaluate_loss(const ModelConfig& config, const ModelWeights& weights,
                     LoraAdapter& adapter, const std::vector<TrainingSample>& samples, int limit,
                     ThreadPool& pool, int max_tokens, const WeightPager* pager) {
  LoraTrainer trainer(config, weights, adapter, 1.0f, pool, max_tokens, pager);
  return mean_loss(trainer, samples, limit);
}

void finetune(const ModelConfig& config, const ModelWeights& weights, LoraAdapter& adapter,
              const std::vector<TrainingSample>& train, const std::vector<TrainingSample>& eval,
              const FinetuneOptions& o, ThreadPool& pool,
              const std::function<void(const StepReport&)>& report) {
  if (train.empty()) fail("no training sequences");
  if (o.steps < 1 || o.batch < 1) fail("--steps and --batch must be at least 1");
  if (!(o.lr > 0) || !std::isfinite(o.lr)) fail("--lr must be a positive number (got {})", o.lr);
  const int max_tokens = longest_sequence(train, eval);
  if (o.optimizer != "adamw" && o.optimizer != "mezo") {
    fail("unknown optimizer '{}': the choices are adamw (backpropagation) and mezo", o.optimizer);
  }
  const bool mezo = o.optimizer == "mezo";
  LoraTrainer trainer(config, weights, adapter, 1.0f, pool, max_tokens, o.pager);
  LoraGradients grad = mezo ? LoraGradients{} : zero_gradients_like(adapter);
  std::vector<AdamW> adam;  // one state per matrix (none for MeZO)
  for (auto& layer : adapter.layers) {
    for (LoraPair& p : layer) {
      if (p.empty() || mezo) continue;
      adam.emplace_back(p.a.size(), o.weight_decay);
      adam.emplace_back(p.b.size(), o.weight_decay);
    }
  }
  // The held-out loss on the training's own trainer (its buffers serve a pass either way).
  auto held_out = [&] { return mean_loss(trainer, eval, o.eval_samples); };
  TrainingState state;
  state.order.resize(train.size());
  std::iota(state.order.begin(), state.order.end(), 0);
  state.rng.seed(o.seed);
  std::shuffle(state.order.begin(), state.order.end(), state.rng);
  if (!o.resume_path.empty()) load_checkpoint(o.resume_path, adapter, adam, state, o);
  std::vector<size_t>& order = state.order;
  size_t& next = state.next;
  std::mt19937_64& rng = state.rng;
  if (!eval.empty() && state.step == 0) {
    report({.step = 0, .steps = o.steps, .evaluated = true, .eval_loss = held_out()});
  }
  for (int step = state.step + 1; step <= o.steps; ++step) {
    const auto start = std::chrono::steady_clock::now();
    for (auto& layer : grad.layers) {  // (empty for MeZO)
      for (LoraPair& p : layer) {
        std::fill(p.a.begin(), p.a.end(), 0.0f);
        std::fill(p.b.begin(), p.b.end(), 0.0f);
      }
    }
    // A batch of sequences; the loss is the mean over all their counted targets.
    std::vector<const TrainingSample*> batch;
    int64_t targets = 0, tokens = 0;
    for (int b = 0; b < o.batch; ++b) {
      if (next == order.size()) {
        std::shuffle(order.begin(), order.end(), rng);  // the next epoch
        next = 0;
      }
      batch.push_back(&train[order[next++]]);
      targets += batch.back()->targets();
      tokens += static_cast<int64_t>(batch.back()->tokens.size());
    }
    auto batch_loss = [&](LoraGradients* g) {
      double loss = 0;
      for (const TrainingSample* s : batch) {
        std::vector<float> w(s->mask);
        for (float& x : w) x /= static_cast<float>(std::max<int64_t>(targets, 1));
        loss += trainer.loss(s->tokens, w, g);
      }
      return loss;
    };
    const float lr = learning_rate(o, step);
    double loss = 0;
    if (mezo) {
      // SPSA: the loss at theta + eps z and theta - eps z, z ~ N(0, 1) regenerated from its
      // seed rather than stored; then theta -= lr * (L+ - L-) / (2 eps) * z.
      const uint64_t z_seed = o.seed * 1000003 + static_cast<uint64_t>(step);
      perturb(adapter, z_seed, o.mezo_eps);
      const double plus = batch_loss(nullptr);
      perturb(adapter, z_seed, -2 * o.mezo_eps);
      const double minus = batch_loss(nullptr);
      perturb(adapter, z_seed, o.mezo_eps);
      loss = 0.5 * (plus + minus);
      perturb(adapter, z_seed, static_cast<float>(-lr * (plus - minus) / (2 * o.mezo_eps)));
    } else {
      loss = batch_loss(&grad);
      size_t k = 0;
      for (size_t l = 0; l < adapter.layers.size(); ++l) {
        for (int t = 0; t < kLoraTargets; ++t) {
          LoraPair& p = adapter.layers[l][t];
          if (p.empty()) continue;
          adam[k++].step(p.a, grad.layers[l][t].a, lr, step);
          adam[k++].step(p.b, grad.layers[l][t].b, lr, step);
        }
      }
    }
    StepReport r{.step = step, .steps = o.steps, .loss = loss, .lr = lr};
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    r.tokens_per_second = static_cast<double>(tokens) / r.seconds;
    if (!eval.empty() && (step == o.steps || (o.eval_every > 0 && step % o.eval_every == 0))) {
      r.evaluated = true;
      r.eval_loss = held_out();
    }
    report(r);
    state.step = step;
    if (o.checkpoint_every > 0 && (step % o.checkpoint_every == 0 || step == o.steps)) {
      if (o.checkpoint_path.empty()) fail("internal error: checkpoints without a path");
      save_checkpoint(o.checkpoint_path, adapter, adam, state, o);
    }
  }
}

}  // namespace flashlm
