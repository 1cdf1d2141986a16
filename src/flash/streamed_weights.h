// Attention matrices and the output head left on flash, for memory budgets too small to hold
// them (the last resort of the memory plan, after every FFN neuron already streams).
//
// Layers: the q, k, v and output matrices of each streamed layer are read with O_DIRECT into
// one of two buffers while the layer before it computes (the next token's first streamed
// layer is read while the last one computes). Output head: read in chunks of rows, each chunk
// arriving while the one before it computes; the first chunk of the next token's head is read
// during that token's layers. Norms and biases (a few KiB per layer) stay in DRAM.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flash/flash_embedding.h"
#include "flash/io_engine.h"
#include "flash/memory_plan.h"
#include "gguf/gguf.h"
#include "model/weight_stream.h"
#include "model/weights.h"

namespace flashlm {

class ThreadPool;

struct StreamedWeightStats {
  double io_seconds = 0;  // waiting for attention and output-head reads
  uint64_t bytes_read = 0;
};

class StreamedWeights : public WeightStream {
 public:
  // Bytes of the output head read per step (at most): large enough to keep the device busy,
  // small enough that two chunks cost little DRAM.
  static constexpr uint64_t kOutputChunkBytes = 4 << 20;

  // The bytes of DRAM layer `layer`'s streamed matrices take (the sum of their tensors).
  static uint64_t attention_bytes(const GgufFile& file, int layer);
  // The output head's tensor: output.weight, or the token embedding when they are tied.
  static const GgufTensor& output_tensor(const GgufFile& file);
  // DRAM for the read buffers: two layers' matrices, each aligned; two output-head chunks.
  static uint64_t layer_buffer_bytes(const GgufFile& file, int n_layers);
  static uint64_t output_buffer_bytes(const GgufFile& file);
  // Rows of the head per chunk: kOutputChunkBytes of them, at most a quarter of the head.
  static int64_t output_chunk_rows(const GgufTensor& head);

  // Streams the attention of layers first_streamed_layer..n-1 (none when it is n) and, when
  // `stream_output`, the output head, from the model file `file` (opened again with O_DIRECT).
  StreamedWeights(const GgufFile& file, const ModelWeights& weights, int first_streamed_layer,
                  bool stream_output, IoBackend backend, ThreadPool& pool);
  ~StreamedWeights() override;

  const LayerWeights& layer(int layer, const LayerWeights& resident) override;
  bool output(const float* x, int64_t n_tokens, float* logits) override;
  bool streams_output() const override { return stream_output_; }

  const StreamedWeightStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  // One matrix to read: where it lies in the file, and the view to point at its bytes.
  struct Piece {
    uint64_t offset = 0, bytes = 0;
    Matrix LayerWeights::*member = nullptr;
  };
  void submit_layer(int layer, int slot);
  void submit_chunk(int64_t chunk, int slot);
  void wait(IoEngine& io);

  const ModelWeights& weights_;
  ThreadPool& pool_;
  int n_layers_ = 0, first_streamed_ = 0;
  IoEngine layer_io_, output_io_;
  std::vector<std::vector<Piece>> pieces_;  // [layer]: its streamed matrices
  AlignedBuffer layer_buffers_[2];
  LayerWeights views_[2];
  int pending_layer_ = -1, pending_layer_slot_ = 0;
  std::vector<ReadRequest> requests_;

  bool stream_output_ = false;
  Matrix output_;  // the head's shape and type; data unused
  uint64_t output_offset_ = 0;
  int64_t chunk_rows_ = 0, n_chunks_ = 0;
  AlignedBuffer output_buffers_[2];
  const uint8_t* chunk_rows_at_[2] = {nullptr, nullptr};  // where each slot's first row landed
  int64_t pending_chunk_ = -1;
  int pending_chunk_slot_ = 0;
  std::vector<ReadRequest> chunk_requests_;
  StreamedWeightStats stats_;
};

// What a plan leaves on flash besides the FFN: the embedding table and the streamed attention
// and output head, built once for any forward pass (engine, calibrate); null where resident.
struct FlashWeightSources {
  std::unique_ptr<FlashEmbedding> embedding;
  std::unique_ptr<StreamedWeights> streamed;
  FlashWeightSources(const GgufFile& file, const ModelWeights& weights, const MemoryPlan& plan,
                     IoBackend backend, ThreadPool& pool);
};

}  // namespace flashlm
