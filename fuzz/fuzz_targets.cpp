#include "fuzz_targets.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "common/error.h"
#include "flash/flash_layout.h"
#include "gguf/gguf.h"
#include "model/config.h"
#include "model/weights.h"
#include "server/api.h"
#include "sparse/predictor.h"
#include "sparse/sparsity.h"
#include "tokenizer/tokenizer.h"

namespace flashlm::fuzz {
namespace {

// The readers open paths; an in-memory file (memfd) gives them one without touching the disk.
class MemoryFile {
 public:
  MemoryFile(const uint8_t* data, size_t size) {
    fd_ = memfd_create("flashlm-fuzz", MFD_CLOEXEC);
    if (fd_ < 0) std::abort();  // the harness itself is broken, not the input
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::write(fd_, data + done, size - done);
      if (n <= 0) std::abort();
      done += static_cast<size_t>(n);
    }
  }
  ~MemoryFile() { ::close(fd_); }
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_ = -1;
};

volatile uint8_t g_sink;

// What Model::load does, without keeping anything.
void load_like_a_model(const GgufFile& file, bool require_ffn) {
  for (const auto& entry : file.metadata()) (void)entry.second.to_string();
  for (const GgufTensor& t : file.tensors()) {
    const std::span<const uint8_t> bytes = file.tensor_data(t);
    if (!bytes.empty()) g_sink = bytes.front() ^ bytes.back();
  }
  const ModelConfig config = ModelConfig::from_gguf(file);
  (void)ModelWeights::from_gguf(file, config, require_ffn);
  const Tokenizer tokenizer = Tokenizer::from_gguf(file);
  // Decoding every piece reads every token string the way generation would.
  for (int32_t id = 0; id < tokenizer.vocab_size() && id < 4096; ++id) {
    (void)tokenizer.token_piece(id);
  }
}

const Tokenizer& fuzz_tokenizer() {
  // FLASHLM_FUZZ_TOKENIZER names the model whose tokenizer is fuzzed; the default is the
  // SmolLM2 model the test suite fetches (a real 49k vocabulary with merges).
  static const std::unique_ptr<GgufFile> file = [] {
    const char* env = std::getenv("FLASHLM_FUZZ_TOKENIZER");
    std::string path = env ? env : std::string(FLASHLM_SOURCE_DIR) +
                                       "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    return GgufFile::open(path);
  }();
  static const Tokenizer tokenizer = Tokenizer::from_gguf(*file);
  return tokenizer;
}

}  // namespace

void gguf_file(const uint8_t* data, size_t size) {
  const MemoryFile memory(data, size);
  const auto file = GgufFile::open(memory.path());
  load_like_a_model(*file, !FlashModelFile::is_flm(*file));
}

void flm_file(const uint8_t* data, size_t size) {
  const MemoryFile memory(data, size);
  const auto flm = FlashModelFile::open(memory.path());
  flm->verify();
  load_like_a_model(flm->gguf(), /*require_ffn=*/false);
}

void tokenizer_text(const uint8_t* data, size_t size) {
  const Tokenizer& tokenizer = fuzz_tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)tokenizer.decode(tokenizer.encode(text, true, false));
  (void)tokenizer.decode(tokenizer.encode(text, false, true));
  // The bytes as little-endian ids too, now and then one past the vocabulary (an Error).
  std::vector<uint32_t> raw(size / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  std::vector<int32_t> ids;
  for (uint32_t r : raw) ids.push_back(static_cast<int32_t>(r % (tokenizer.vocab_size() + 1u)));
  StreamDecoder stream(tokenizer);
  for (int32_t id : ids) (void)stream.push(id);
  (void)stream.flush();
}

void server_request(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const ApiLimits limits{.model_id = "smollm2", .context_size = 2048, .vocab_size = 49152};
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  GenerationParams params;
  int prompt_tokens = 0;
  if (data[0] % 2 == 0) {
    const CompletionRequest r = parse_completion_request(body, limits);
    params = r.params;
    prompt_tokens = r.prompt_is_tokens ? static_cast<int>(r.prompt_tokens.size())
                                       : static_cast<int>(r.prompt.size());
  } else {
    const ChatRequest r = parse_chat_request(body, limits);
    params = r.params;
    for (const ChatMessage& m : r.messages) prompt_tokens += static_cast<int>(m.content.size());
  }
  (void)resolve_max_tokens(params, prompt_tokens, limits.context_size, 256, "prompt");
}

void sparsity_file(const uint8_t* data, size_t size) {
  constexpr int kLayers = 2, kModel = 32, kFfn = 32;  // scripts/fuzz_seeds.py's spm_q8_0 model
  const MemoryFile memory(data, size);
  const auto file = GgufFile::open(memory.path());
  if (file->has("flashlm.sparsity.levels")) {
    const SparsityProfile profile = SparsityProfile::from_gguf(*file, kLayers);
    for (float level : profile.levels) {
      for (float t : profile.at(level)) g_sink = static_cast<uint8_t>(t > 0);
    }
  }
  for (float level : ActivationPredictor::levels_in(*file)) {
    const auto predictor = ActivationPredictor::from_gguf(*file, level, kLayers, kModel, kFfn);
    if (!predictor) continue;
    for (const auto& layer : predictor->layers) {
      g_sink = static_cast<uint8_t>(layer.a.empty() ? 0 : layer.a.back() > 0);
      for (int32_t i : layer.pinned) g_sink = static_cast<uint8_t>(i);
    }
  }
}

Entry entry_by_name(const std::string& harness) {
  if (harness == "gguf_file") return gguf_file;
  if (harness == "flm_file") return flm_file;
  if (harness == "tokenizer_text") return tokenizer_text;
  if (harness == "server_request") return server_request;
  if (harness == "sparsity_file") return sparsity_file;
  return nullptr;
}

}  // namespace flashlm::fuzz
