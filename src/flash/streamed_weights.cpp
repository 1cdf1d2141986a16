#include "flash/streamed_weights.h"

#include <algorithm>

#include "common/error.h"
#include "common/mapped_files.h"
#include "common/stopwatch.h"
#include "flash/read_plan.h"
#include "ops/ops.h"

namespace flashlm {

namespace {

struct StreamedMatrix {
  const char* suffix;
  Matrix LayerWeights::*member;
};
constexpr StreamedMatrix kStreamed[] = {{"attn_q.weight", &LayerWeights::wq},
                                        {"attn_k.weight", &LayerWeights::wk},
                                        {"attn_v.weight", &LayerWeights::wv},
                                        {"attn_output.weight", &LayerWeights::wo}};

const GgufTensor& layer_tensor(const GgufFile& file, int layer, const char* suffix) {
  return file.tensor("blk." + std::to_string(layer) + "." + suffix);
}

// A read of [offset, offset + bytes) widened to the alignment, as it lands in a buffer.
uint64_t aligned_span(uint64_t offset, uint64_t bytes, uint64_t alignment) {
  return align_up(offset + bytes, alignment) - align_down(offset, alignment);
}

}  // namespace

uint64_t StreamedWeights::attention_bytes(const GgufFile& file, int layer) {
  uint64_t bytes = 0;
  for (const StreamedMatrix& m : kStreamed) bytes += layer_tensor(file, layer, m.suffix).bytes;
  return bytes;
}

const GgufTensor& StreamedWeights::output_tensor(const GgufFile& file) {
  const GgufTensor* head = file.find_tensor("output.weight");
  return head ? *head : file.tensor("token_embd.weight");
}

uint64_t StreamedWeights::layer_buffer_bytes(const GgufFile& file, int n_layers) {
  uint64_t largest = 0;
  for (int l = 0; l < n_layers; ++l) {
    uint64_t bytes = 0;
    for (const StreamedMatrix& m : kStreamed) {
      const GgufTensor& t = layer_tensor(file, l, m.suffix);
      bytes += aligned_span(t.offset, t.bytes, kPageBytes);
    }
    largest = std::max(largest, bytes);
  }
  return 2 * largest;
}

int64_t StreamedWeights::output_chunk_rows(const GgufTensor& head) {
  const int64_t rows = std::max<int64_t>(head.rows(), 1);
  const uint64_t row = std::max<uint64_t>(head.bytes / rows, 1);
  // A quarter of a small head at most, so that its two chunks take less than the head itself.
  const uint64_t chunk = std::min<uint64_t>(kOutputChunkBytes, head.bytes / 4);
  return std::clamp<int64_t>(static_cast<int64_t>(chunk / row), 1, rows);
}

uint64_t StreamedWeights::output_buffer_bytes(const GgufFile& file) {
  const GgufTensor& head = output_tensor(file);
  const uint64_t row = head.bytes / std::max<int64_t>(head.rows(), 1);
  const uint64_t rows = static_cast<uint64_t>(output_chunk_rows(head));
  return 2 * (align_up(rows * row, kPageBytes) + kPageBytes);
}

StreamedWeights::StreamedWeights(const GgufFile& file, const ModelWeights& weights,
                                 int first_streamed_layer, bool stream_output, IoBackend backend,
                                 ThreadPool& pool)
    : weights_(weights),
      pool_(pool),
      n_layers_(static_cast<int>(weights.layers.size())),
      first_streamed_(std::clamp(first_streamed_layer, 0, n_layers_)),
      layer_io_(file.path(), backend),
      output_io_(file.path(), backend),
      stream_output_(stream_output),
      output_(weights.output) {
  if (layer_io_.alignment() > kPageBytes) {
    fail("{}: the file system asks O_DIRECT reads to be aligned to {} bytes, more than the {} "
         "the memory plan counts; keep the attention and the output head in DRAM (a larger "
         "--mem-budget)",
         file.path(), layer_io_.alignment(), kPageBytes);
  }
  pieces_.resize(n_layers_);
  for (int l = first_streamed_; l < n_layers_; ++l) {
    for (const StreamedMatrix& m : kStreamed) {
      const GgufTensor& t = layer_tensor(file, l, m.suffix);
      if (t.bytes != (weights.layers[l].*m.member).bytes()) {
        fail("{}: tensor '{}' holds {} bytes, not the {} its shape needs; the file is corrupt",
             file.path(), t.name, t.bytes, (weights.layers[l].*m.member).bytes());
      }
      pieces_[l].push_back({t.offset, t.bytes, m.member});
    }
  }
  if (first_streamed_ < n_layers_) {
    const uint64_t each = layer_buffer_bytes(file, n_layers_) / 2;
    for (AlignedBuffer& b : layer_buffers_) b = AlignedBuffer(each);
    submit_layer(first_streamed_, 0);  // the first token's first streamed layer, now
  }
  if (stream_output_) {
    const GgufTensor& head = output_tensor(file);
    if (head.bytes != output_.bytes()) {
      fail("{}: tensor '{}' holds {} bytes, not the {} its shape needs; the file is corrupt",
           file.path(), head.name, head.bytes, output_.bytes());
    }
    output_offset_ = head.offset;
    chunk_rows_ = output_chunk_rows(head);
    n_chunks_ = (output_.rows + chunk_rows_ - 1) / chunk_rows_;
    const uint64_t each = output_buffer_bytes(file) / 2;
    for (AlignedBuffer& b : output_buffers_) b = AlignedBuffer(each);
    submit_chunk(0, 0);
  }
}

StreamedWeights::~StreamedWeights() {
  // The reads a step ahead land in buffers that die with this object: finish them first.
  for (IoEngine* io : {&layer_io_, &output_io_}) {
    try {
      io->wait();
    } catch (const Error&) {
      // A failed read ahead nobody will use: nothing to report.
    }
  }
}

void StreamedWeights::wait(IoEngine& io) {
  const auto start = Clock::now();
  io.wait();
  stats_.io_seconds += seconds_since(start);
}

void StreamedWeights::submit_layer(int layer, int slot) {
  const uint64_t align = layer_io_.alignment();
  uint8_t* dest = layer_buffers_[slot].data();
  LayerWeights& view = views_[slot];
  view = weights_.layers[layer];
  requests_.clear();
  for (const Piece& p : pieces_[layer]) {
    const uint64_t first = align_down(p.offset, align);
    const uint64_t bytes = aligned_span(p.offset, p.bytes, align);
    for (const ReadRequest& r : range_requests(first, bytes, kStreamRequestBytes, dest)) {
      requests_.push_back(r);
    }
    (view.*p.member).data = dest + (p.offset - first);
    dest += bytes;
    stats_.bytes_read += bytes;
  }
  layer_io_.submit(requests_);
  pending_layer_ = layer;
  pending_layer_slot_ = slot;
}

const LayerWeights& StreamedWeights::layer(int layer, const LayerWeights& resident) {
  if (layer < first_streamed_) return resident;
  if (pending_layer_ != layer) {  // out of order (never in a forward pass): read it now
    wait(layer_io_);
    submit_layer(layer, 1 - pending_layer_slot_);
  }
  wait(layer_io_);
  const int slot = pending_layer_slot_;
  // The next streamed layer (this token's, or the next token's first) arrives while this one
  // computes, into the other buffer.
  submit_layer(layer + 1 < n_layers_ ? layer + 1 : first_streamed_, 1 - slot);
  return views_[slot];
}

void StreamedWeights::submit_chunk(int64_t chunk, int slot) {
  const uint64_t align = output_io_.alignment();
  const int64_t first_row = chunk * chunk_rows_;
  const int64_t rows = std::min(chunk_rows_, output_.rows - first_row);
  const uint64_t offset = output_offset_ + static_cast<uint64_t>(first_row) * output_.row_bytes;
  const uint64_t bytes = static_cast<uint64_t>(rows) * output_.row_bytes;
  const uint64_t first = align_down(offset, align);
  const uint64_t span = aligned_span(offset, bytes, align);
  chunk_requests_ =
      range_requests(first, span, kStreamRequestBytes, output_buffers_[slot].data());
  output_io_.submit(chunk_requests_);
  chunk_rows_at_[slot] = output_buffers_[slot].data() + (offset - first);
  stats_.bytes_read += span;
  pending_chunk_ = chunk;
  pending_chunk_slot_ = slot;
}

bool StreamedWeights::output(const float* x, int64_t n_tokens, float* logits) {
  if (!stream_output_) return false;
  const int64_t vocab = output_.rows;
  for (int64_t chunk = 0; chunk < n_chunks_; ++chunk) {
    if (pending_chunk_ != chunk) {
      wait(output_io_);
      submit_chunk(chunk, 1 - pending_chunk_slot_);
    }
    wait(output_io_);
    const int slot = pending_chunk_slot_;
    // The next chunk (or the next token's first) arrives while this one computes.
    submit_chunk(chunk + 1 < n_chunks_ ? chunk + 1 : 0, 1 - slot);
    Matrix part = output_;
    part.data = chunk_rows_at_[slot];
    part.rows = std::min(chunk_rows_, vocab - chunk * chunk_rows_);
    for (int64_t t = 0; t < n_tokens; ++t) {
      linear(part, x + t * output_.cols, 1, logits + t * vocab + chunk * chunk_rows_, pool_);
    }
  }
  return true;
}

FlashWeightSources::FlashWeightSources(const GgufFile& file, const ModelWeights& weights,
                                       const MemoryPlan& plan, IoBackend backend,
                                       ThreadPool& pool) {
  if (plan.embedding_flash_bytes > 0) {
    embedding = std::make_unique<FlashEmbedding>(file.path(), file.tensor("token_embd.weight"),
                                                 backend);
  } else if (weights.token_embedding.data != weights.output.data) {
    // A table in DRAM that is not also the output head would otherwise come in a row at a time
    // as tokens first appear: the plan counts all of it, so it is all read in now.
    fault_in(weights.token_embedding.data, weights.token_embedding.bytes());
  }
  if (plan.streams_weights()) {
    streamed = std::make_unique<StreamedWeights>(
        file, weights, static_cast<int>(weights.layers.size()) - plan.streamed_attention_layers,
        plan.output_streamed, backend, pool);
  }
}

}  // namespace flashlm
