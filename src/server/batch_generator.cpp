#include "server/batch_generator.h"

#include <algorithm>
#include <atomic>

#include "common/error.h"
#include "common/stopwatch.h"
#include "sampling/sampler.h"
#include "server/stop_matcher.h"

namespace flashlm {

struct BatchGenerator::Job {
  std::vector<int32_t> prompt;
  SessionRequest request;  // its prompt is `prompt`
  std::atomic<bool> cancelled{false};  // the caller's on_text said no

  // From the worker to the caller, under `mutex`.
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::string> pieces;
  bool done = false;
  SessionResult result;
  std::exception_ptr error;

  void publish(std::string text) {
    std::lock_guard lock(mutex);
    pieces.push_back(std::move(text));
    changed.notify_one();
  }
  void end() {
    std::lock_guard lock(mutex);
    done = true;
    changed.notify_one();
  }
};

// A sequence the generator can run: its KV cache, the tokens that cache holds (kept after a
// request ends, so that a later one with the same beginning reuses them), and the request
// running there, if any.
struct BatchGenerator::Slot {
  explicit Slot(KvCache& c) : cache(&c) {}
  KvCache* cache;
  std::vector<int32_t> cached;
  std::shared_ptr<Job> job;
  // The running request's state.
  size_t fed = 0;          // prompt tokens in the cache
  bool decoding = false;   // the prompt is in; `next` is the sampled token to feed
  int32_t next = -1;
  std::optional<Sampler> sampler;
  std::optional<StreamDecoder> decoder;
  std::optional<StopMatcher> matcher;
  int generated = 0;
  Clock::time_point started, decode_started;
};

BatchGenerator::BatchGenerator(Engine& engine, const Tokenizer& tokenizer, int max_waiting)
    : engine_(engine), tokenizer_(tokenizer), max_waiting_(max_waiting) {
  if (engine.sequences() > engine.transformer().max_batch()) {
    fail("--parallel {} needs a batch of at least {} tokens (-b {})", engine.sequences(),
         engine.sequences(), engine.transformer().max_batch());
  }
  for (int i = 0; i < engine.sequences(); ++i) slots_.emplace_back(engine.kv_cache(i));
  worker_ = std::jthread([this] { work(); });
}

BatchGenerator::~BatchGenerator() {
  close();
  if (worker_.joinable()) worker_.join();
}

void BatchGenerator::close() {
  std::lock_guard lock(mutex_);
  closed_ = true;
  work_changed_.notify_all();
}

int BatchGenerator::waiting() const {
  std::lock_guard lock(mutex_);
  return static_cast<int>(waiting_.size());
}

int BatchGenerator::slots() const { return static_cast<int>(slots_.size()); }

int BatchGenerator::running() const {
  std::lock_guard lock(mutex_);
  return running_;
}

BatchGenerator::Ticket::~Ticket() {
  if (job_) job_->cancelled = true;
}

std::optional<BatchGenerator::Ticket> BatchGenerator::submit(const SessionRequest& request) {
  if (request.prompt.empty()) fail("cannot generate from an empty prompt");
  auto job = std::make_shared<Job>();
  job->prompt.assign(request.prompt.begin(), request.prompt.end());
  job->request = request;
  job->request.prompt = job->prompt;
  std::lock_guard lock(mutex_);
  const size_t room = slots_.size() + static_cast<size_t>(max_waiting_);
  if (closed_ || waiting_.size() + static_cast<size_t>(running_) >= room) return std::nullopt;
  waiting_.push_back(job);
  work_changed_.notify_all();
  return Ticket(std::move(job));
}

SessionResult BatchGenerator::wait(Ticket ticket, const TextCallback& on_text) {
  const std::shared_ptr<Job> job = std::move(ticket.job_);
  std::unique_lock lock(job->mutex);
  for (;;) {
    job->changed.wait(lock, [&] { return job->done || !job->pieces.empty(); });
    std::vector<std::string> pieces;
    pieces.swap(job->pieces);
    const bool done = job->done;
    lock.unlock();
    for (const std::string& piece : pieces) {
      if (!job->cancelled && !on_text(piece)) job->cancelled = true;
    }
    lock.lock();
    if (done && job->pieces.empty()) break;
  }
  if (job->error) std::rethrow_exception(job->error);
  return job->result;
}

void BatchGenerator::work() {
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      work_changed_.wait(lock, [&] { return closed_ || !waiting_.empty() || running_ > 0; });
      if (closed_) {
        for (const std::shared_ptr<Job>& job : waiting_) {
          job->result.finish = Finish::Cancelled;
          job->result.stats.cancelled = true;
          job->end();
        }
        waiting_.clear();
        for (Slot& slot : slots_) {
          if (slot.job) slot.job->cancelled = true;
        }
        if (running_ == 0) return;
      }
      admit();
    }
    try {
      step();
    } catch (...) {
      fail_all(std::current_exception());
    }
  }
}

// Each waiting request takes the free slot whose cache shares the longest beginning with its
// prompt (a chat client resends the conversation: only the new turn is computed).
void BatchGenerator::admit() {
  while (!waiting_.empty()) {
    const std::vector<int32_t>& prompt = waiting_.front()->prompt;
    Slot* best = nullptr;
    size_t best_common = 0;
    for (Slot& slot : slots_) {
      if (slot.job) continue;
      const size_t common =
          std::mismatch(slot.cached.begin(), slot.cached.end(), prompt.begin(), prompt.end())
              .first -
          slot.cached.begin();
      if (!best || common > best_common) best = &slot, best_common = common;
    }
    if (!best) return;
    Slot& slot = *best;
    slot.job = std::move(waiting_.front());
    waiting_.pop_front();
    ++running_;
    // The last prompt token is always processed again: its logits pick the first new token.
    const size_t keep = std::min(best_common, prompt.size() - 1);
    slot.cache->truncate(static_cast<int>(keep));
    slot.cached.resize(keep);
    slot.fed = keep;
    slot.decoding = false;
    slot.generated = 0;
    const SessionRequest& request = slot.job->request;
    slot.sampler.emplace(request.sampling);
    slot.decoder.emplace(tokenizer_);
    slot.matcher.emplace(request.stop);
    slot.started = Clock::now();
    slot.job->result.prompt_tokens = static_cast<int>(prompt.size());
    slot.job->result.reused_tokens = static_cast<int>(keep);
    slot.job->result.stats.prompt_tokens = static_cast<int>(prompt.size() - keep);
  }
}

bool BatchGenerator::step() {
  for (Slot& slot : slots_) {
    if (!slot.job) continue;
    const SessionRequest& request = slot.job->request;
    if (slot.job->cancelled || (request.cancelled && request.cancelled())) {
      finish(slot, Finish::Cancelled);
    }
  }
  // Decoding requests first, a token each; prompts fill the rest of the batch.
  Transformer& transformer = engine_.transformer();
  int64_t room = transformer.max_batch();
  std::vector<SequenceStep> steps;
  std::vector<Slot*> stepped;
  for (Slot& slot : slots_) {
    if (!slot.job || !slot.decoding) continue;
    steps.push_back({slot.cache, {&slot.next, 1}});
    stepped.push_back(&slot);
    --room;
  }
  for (Slot& slot : slots_) {
    if (!slot.job || slot.decoding || room == 0) continue;
    const std::vector<int32_t>& prompt = slot.job->prompt;
    const size_t n = std::min<size_t>(prompt.size() - slot.fed, static_cast<size_t>(room));
    steps.push_back({slot.cache, std::span<const int32_t>(prompt).subspan(slot.fed, n)});
    stepped.push_back(&slot);
    room -= static_cast<int64_t>(n);
  }
  if (steps.empty()) return false;

  const std::span<const float> logits = transformer.forward(steps);
  const size_t vocab = static_cast<size_t>(transformer.config().vocab_size);
  for (size_t i = 0; i < stepped.size(); ++i) {
    Slot& slot = *stepped[i];
    Job& job = *slot.job;
    slot.cached.insert(slot.cached.end(), steps[i].tokens.begin(), steps[i].tokens.end());
    if (!slot.decoding) {
      slot.fed += steps[i].tokens.size();
      if (slot.fed < job.prompt.size()) continue;
      slot.decoding = true;
      job.result.stats.prompt_seconds = seconds_since(slot.started);
      slot.decode_started = Clock::now();
      if (job.request.max_tokens <= 0) {
        finish(slot, Finish::Length);
        continue;
      }
    }
    // As in generate(): a generated token is taken unless it ends generation, then the
    // request ends at a stop sequence, its token limit or a full context.
    const int32_t token = slot.sampler->sample(logits.subspan(i * vocab, vocab));
    if (tokenizer_.is_end_of_generation(token)) {
      job.result.stats.stopped_by_eog = true;
      finish(slot, Finish::Stop);
      continue;
    }
    ++slot.generated;
    job.publish(slot.matcher->push(slot.decoder->push(token)));
    if (slot.matcher->stopped()) {
      finish(slot, Finish::Stop);
    } else if (slot.generated >= job.request.max_tokens ||
               slot.cache->size() >= slot.cache->capacity()) {
      finish(slot, Finish::Length);
    } else {
      slot.next = token;
    }
  }
  return true;
}

void BatchGenerator::finish(Slot& slot, Finish finish) {
  Job& job = *slot.job;
  if (finish != Finish::Cancelled && !slot.matcher->stopped()) {
    std::string tail = slot.matcher->push(slot.decoder->flush());
    tail += slot.matcher->flush();
    if (!tail.empty()) job.publish(std::move(tail));
  }
  SessionResult& result = job.result;
  result.finish = finish;
  result.completion_tokens = slot.generated;
  result.stats.generated_tokens = slot.generated;
  result.stats.cancelled = finish == Finish::Cancelled;
  if (slot.decoding) result.stats.decode_seconds = seconds_since(slot.decode_started);
  std::shared_ptr<Job> done = std::move(slot.job);
  {
    std::lock_guard lock(mutex_);
    --running_;
  }
  done->end();
}

void BatchGenerator::fail_all(std::exception_ptr error) {
  // A pass that failed halfway leaves the caches in no known state.
  for (Slot& slot : slots_) {
    slot.cache->truncate(0);
    slot.cached.clear();
    if (!slot.job) continue;
    std::shared_ptr<Job> job = std::move(slot.job);
    {
      std::lock_guard lock(mutex_);
      --running_;
    }
    {
      std::lock_guard lock(job->mutex);
      job->error = error;
    }
    job->end();
  }
}

}  // namespace flashlm
