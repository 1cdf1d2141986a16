#include "flash/memory_plan.h"

#include <cmath>
#include <cstdlib>

#include "common/error.h"
#include "flash/flash_embedding.h"
#include "flash/flash_layout.h"
#include "flash/streamed_weights.h"

namespace flashlm {
namespace {
std::string mib(uint64_t bytes) { return fmt::format("{:.1f} MiB", bytes / 1048576.0); }
}  // namespace

FfnMode parse_ffn_mode(const std::string& name) {
  if (name == "dense") return FfnMode::Dense;
  if (name == "naive") return FfnMode::Naive;
  if (name == "hybrid") return FfnMode::Hybrid;
  if (name == "mmap") return FfnMode::Mmap;
  if (name == "sparse") return FfnMode::Sparse;
  if (name == "sparse-oracle") return FfnMode::SparseOracle;
  fail("unknown mode '{}'; use dense, naive, hybrid, mmap, sparse or sparse-oracle", name);
}

const char* ffn_mode_name(FfnMode mode) {
  switch (mode) {
    case FfnMode::Dense: return "dense";
    case FfnMode::Naive: return "naive";
    case FfnMode::Hybrid: return "hybrid";
    case FfnMode::Mmap: return "mmap";
    case FfnMode::Sparse: return "sparse";
    case FfnMode::SparseOracle: return "sparse-oracle";
  }
  return "?";
}

const char* sparse_reads_name(SparseReads reads) {
  return reads == SparseReads::Streamed ? "streamed" : "planned";
}

SparseReads parse_sparse_reads(const std::string& name, double coverage) {
  if (name == "planned") return SparseReads::Planned;
  if (name == "streamed") return SparseReads::Streamed;
  if (name == "auto") {
    return coverage >= kStreamedCoverage ? SparseReads::Streamed : SparseReads::Planned;
  }
  fail("unknown sparse read strategy '{}'; use auto, planned or streamed", name);
}

const GgufTensor* untied_embedding(const GgufFile& file) {
  return file.find_tensor("output.weight") ? file.find_tensor("token_embd.weight") : nullptr;
}

uint64_t parse_memory_budget(const std::string& text, uint64_t model_bytes) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  const std::string suffix(end ? end : "");
  double bytes = -1;
  if (end != text.c_str() && std::isfinite(value) && value >= 0) {
    if (suffix == "%") bytes = value / 100.0 * static_cast<double>(model_bytes);
    if (suffix.empty()) bytes = value;
    if (suffix == "K" || suffix == "k" || suffix == "KiB") bytes = value * 1024.0;
    if (suffix == "M" || suffix == "m" || suffix == "MiB") bytes = value * 1048576.0;
    if (suffix == "G" || suffix == "g" || suffix == "GiB") bytes = value * 1073741824.0;
  }
  if (bytes < 0 || bytes > 1e18) {
    fail("cannot read memory budget '{}': use a percentage of the model (50%), a size with K, M "
         "or G (300M, 1.5G), or a number of bytes",
         text);
  }
  return static_cast<uint64_t>(bytes);
}

namespace {

// The refusal every planner gives: the numbers, and what to change.
[[noreturn]] void refuse(const MemoryPlan& p, uint64_t needed, const char* advice) {
  const WorkingMemory& w = p.working;
  fail("the memory budget of {} is too small for {} mode: it needs at least {} (resident weights "
       "{}, stream buffers {}, FFN in DRAM {}, KV cache {}, activations {}, predictors {}, the "
       "process itself {}, reserve {}{}{}{}); raise --mem-budget, pass a smaller -c or "
       "--cache-type-k/-v q8_0 (KV cache){}{}{}",
       mib(p.budget), ffn_mode_name(p.mode), mib(needed), mib(p.resident_bytes),
       mib(p.stream_buffer_bytes), mib(p.mode == FfnMode::Dense ? p.ffn_dram_bytes : 0),
       mib(w.kv_cache), mib(w.activations), mib(w.predictors), mib(w.process), mib(w.reserve),
       w.samples ? fmt::format(", calibration samples {}", mib(w.samples)) : "",
       w.adapters ? fmt::format(", LoRA adapters {}", mib(w.adapters)) : "",
       w.draft_model ? fmt::format(", draft model {}", mib(w.draft_model)) : "",
       w.samples ? ", fewer --tokens (calibration samples)" : "",
       w.draft_model ? ", a smaller draft model or --draft ngram (draft model)" : "", advice);
}

}  // namespace

MemoryPlan plan_gguf_memory(const GgufFile& model, uint64_t budget, const WorkingMemory& working) {
  MemoryPlan p;
  p.mode = FfnMode::Dense;
  p.budget = budget;
  p.working = working;
  for (const GgufTensor& t : model.tensors()) p.resident_bytes += t.bytes;
  p.model_bytes = p.resident_bytes;
  if (budget < p.fixed_bytes()) {
    refuse(p, p.fixed_bytes(),
           "; a GGUF model runs with all its weights in DRAM: to run it in less memory, convert "
           "it (flashlm convert -m MODEL.gguf -o MODEL.flm) and use a streaming mode");
  }
  return p;
}

namespace {

// The smallest step past a plan whose fixed part does not fit: the attention of as few layers
// as needed (the last ones), then the output head as well, left on flash and streamed. Every
// byte streamed is read again every token, so no more is streamed than the budget demands.
// Returns the plan that fits, or the one that streams everything (for the refusal).
MemoryPlan stream_weights(const FlashModelFile& model, const MemoryPlan& resident,
                          uint64_t budget) {
  const GgufFile& file = model.gguf();
  const int n = resident.n_layers;
  MemoryPlan p;
  for (const bool output : {false, true}) {
    for (int k = 1; k <= n; ++k) {
      p = resident;
      p.streamed_attention_layers = k;
      for (int l = n - k; l < n; ++l) {
        p.attention_flash_bytes += StreamedWeights::attention_bytes(file, l);
      }
      p.resident_bytes -= p.attention_flash_bytes;
      p.stream_buffer_bytes += StreamedWeights::layer_buffer_bytes(file, n);
      if (output) {
        const GgufTensor& head = StreamedWeights::output_tensor(file);
        p.output_streamed = true;
        p.output_flash_bytes = head.bytes;
        p.stream_buffer_bytes += StreamedWeights::output_buffer_bytes(file);
        if (p.embedding_flash_bytes == 0) {
          // Tied: the head is the embedding table, which then leaves DRAM too; each token
          // reads its own row of it.
          p.embedding_flash_bytes = head.bytes;
          p.stream_buffer_bytes +=
              FlashEmbedding::buffer_bytes(head.bytes / std::max<int64_t>(head.rows(), 1),
                                           kPageBytes);
        }
        p.resident_bytes -= head.bytes;
      }
      if (p.fixed_bytes() <= budget) return p;
    }
  }
  return p;
}

}  // namespace

uint64_t layer_buffer_bytes(const FlashModelFile& model) {
  uint64_t largest = 0;
  for (const FlmLayer& l : model.layers()) largest = std::max(largest, l.bytes);
  return largest + 2 * kFlmRegionAlignment;
}

MemoryPlan plan_memory(const FlashModelFile& model, FfnMode mode, uint64_t budget,
                       SparseReads reads, const WorkingMemory& working) {
  MemoryPlan p;
  p.mode = mode;
  p.budget = budget;
  p.working = working;
  p.n_layers = static_cast<int>(model.layers().size());
  p.d_ff = model.d_ff();
  p.ffn_bytes = model.bundle_region_bytes();
  for (const GgufTensor& t : model.gguf().tensors()) p.resident_bytes += t.bytes;
  p.model_bytes = p.resident_bytes + p.ffn_bytes;
  const uint64_t layer_bytes = layer_buffer_bytes(model);
  if (const GgufTensor* table = untied_embedding(model.gguf()); table && mode != FfnMode::Dense) {
    p.embedding_flash_bytes = table->bytes;
    p.resident_bytes -= table->bytes;
    p.stream_buffer_bytes +=
        FlashEmbedding::buffer_bytes(table->bytes / std::max<int64_t>(table->rows(), 1), kPageBytes);
  }
  switch (mode) {
    // Dense and hybrid read each layer once at start through one layer's buffer; naive and
    // hybrid then read the streamed part of each layer into it every token.
    case FfnMode::Dense: p.ffn_dram_bytes = p.ffn_bytes; [[fallthrough]];
    case FfnMode::Naive:
    case FfnMode::Hybrid: p.stream_buffer_bytes += layer_bytes; break;
    case FfnMode::Mmap: break;
    case FfnMode::Sparse:
    case FfnMode::SparseOracle:
      p.sparse_reads = reads;
      // Planned: one staging buffer; streamed: the layer computed and the next one arriving.
      p.stream_buffer_bytes += (reads == SparseReads::Streamed ? 2 : 1) * layer_bytes;
      break;
  }
  if (budget < p.fixed_bytes() && mode != FfnMode::Dense && mode != FfnMode::Mmap) {
    p = stream_weights(model, p, budget);
  }
  const uint64_t fixed = p.fixed_bytes();
  if (budget < fixed) {
    refuse(p, fixed,
           mode == FfnMode::Dense ? ", or use a streaming mode (naive, hybrid, sparse, mmap)"
           : mode == FfnMode::Mmap
               ? ""
               : "; the attention and the output head already stream from flash in this plan");
  }
  const uint64_t per_neuron = model.layout().stride * static_cast<uint64_t>(p.n_layers);
  const int neurons = static_cast<int>(std::min<uint64_t>((budget - fixed) / per_neuron, p.d_ff));
  const bool sparse = mode == FfnMode::Sparse || mode == FfnMode::SparseOracle;
  if (mode == FfnMode::Hybrid || sparse) {
    // Hybrid and streamed reads keep a fixed range resident; planned reads fill a cache.
    const bool range = mode == FfnMode::Hybrid || reads == SparseReads::Streamed;
    (range ? p.resident_neurons_per_layer : p.cache_neurons_per_layer) = neurons;
    p.ffn_dram_bytes = per_neuron * static_cast<uint64_t>(neurons);
  }
  return p;
}

std::string MemoryPlan::describe() const {
  std::string s;
  if (budget_given) {
    s = fmt::format("memory plan ({} mode): budget {} for the whole process", ffn_mode_name(mode),
                    mib(budget));
    if (percent_base > 0) {
      s += fmt::format(" ({:.0f}% of the {} {})", 100.0 * budget / percent_base,
                       mib(percent_base), percent_base_what);
    }
  } else {
    s = fmt::format("memory plan ({} mode): no --mem-budget", ffn_mode_name(mode));
  }
  s += "\n";
  if (!mode_reason.empty()) s += fmt::format("  chosen: {}\n", mode_reason);
  s += fmt::format("  resident weights ({}attention, norms, output): {}\n",
                   embedding_flash_bytes > 0 ? "" : "embeddings, ", mib(resident_bytes));
  if (embedding_flash_bytes > 0) {
    s += fmt::format("  token embeddings: {} left on flash, each token's row read when needed\n",
                     mib(embedding_flash_bytes));
  }
  if (streamed_attention_layers > 0) {
    s += fmt::format(
        "  attention of layers {}-{}: {} left on flash (the budget cannot hold it), read every "
        "token one layer ahead\n",
        n_layers - streamed_attention_layers, n_layers - 1, mib(attention_flash_bytes));
  }
  if (output_streamed) {
    s += fmt::format(
        "  output head: {} left on flash (the budget cannot hold it), read every token in {} "
        "chunks, each while the one before it computes\n",
        mib(output_flash_bytes), mib(StreamedWeights::kOutputChunkBytes));
  }
  switch (mode) {
    case FfnMode::Dense:
      s += fmt::format("  FFN: all {} in DRAM\n", mib(ffn_bytes));
      break;
    case FfnMode::Naive:
      s += fmt::format("  FFN: all {} streamed from flash every token; stream buffers {}\n",
                       mib(ffn_bytes), mib(stream_buffer_bytes));
      break;
    case FfnMode::Hybrid:
      s += fmt::format(
          "  FFN: {} of {} neurons per layer resident ({}), the rest streamed every token; "
          "stream buffers {}\n",
          resident_neurons_per_layer, d_ff, mib(ffn_dram_bytes), mib(stream_buffer_bytes));
      break;
    case FfnMode::Mmap:
      s += fmt::format("  FFN: {} memory-mapped; the page cache decides what stays (run inside a "
                       "memory cgroup for an honest budget)\n",
                       mib(ffn_bytes));
      break;
    case FfnMode::Sparse:
    case FfnMode::SparseOracle:
      if (expected_read_coverage > 0) {
        s += fmt::format(
            "  reads of the active neurons would bring in ~{:.0f}% of each layer (pages, merged "
            "holes)\n",
            100 * expected_read_coverage);
      }
      if (sparse_reads == SparseReads::Streamed) {
        s += fmt::format(
            "  FFN (streamed reads): {} of {} neurons per layer resident ({}); the rest of each "
            "layer read whole one layer ahead; stream buffers {}\n",
            resident_neurons_per_layer, d_ff, mib(ffn_dram_bytes), mib(stream_buffer_bytes));
      } else {
        s += fmt::format(
            "  FFN (planned reads): neuron cache of {} of {} neurons per layer ({}); active "
            "neurons not cached are read from flash; staging buffer {}\n",
            cache_neurons_per_layer, d_ff, mib(ffn_dram_bytes), mib(stream_buffer_bytes));
      }
      break;
  }
  s += fmt::format(
      "  KV cache {}, activations {}, predictors {}, the process itself {} (code, libraries, "
      "tokenizer, metadata; measured), reserve {} (allocator slack, thread stacks, page cache "
      "of code and files read)\n",
      mib(working.kv_cache), mib(working.activations), mib(working.predictors),
      mib(working.process), mib(working.reserve));
  if (working.samples > 0) {
    s += fmt::format("  calibration samples and training state: {}\n", mib(working.samples));
  }
  if (working.adapters > 0) s += fmt::format("  LoRA adapters: {}\n", mib(working.adapters));
  if (working.draft_model > 0) {
    s += fmt::format("  draft model: {} (speculative decoding: its weights, KV cache and buffers, "
                     "dense in DRAM)\n",
                     mib(working.draft_model));
  }
  if (mode == FfnMode::Mmap && budget_given) {
    s += fmt::format("  page cache for the mapped FFN: the remaining {}\n",
                     mib(budget > dram_bytes() + working.total()
                             ? budget - dram_bytes() - working.total()
                             : 0));
  }
  s += fmt::format("  weights in DRAM: {}; total: {}", mib(dram_bytes()), mib(total_bytes()));
  if (budget_given) s += fmt::format(" of the {} budget", mib(budget));
  return s;
}

}  // namespace flashlm
