// The token embedding table left on flash: each token's row is read with O_DIRECT when the
// forward pass needs it. A 150k-token vocabulary makes the table 12% of Qwen2.5-1.5B, budget
// that the FFN's resident neurons put to better use than rows a token may never need. Only for
// tables that are not also the output head (which reads all of them every token).
#pragma once

#include <string>
#include <vector>

#include "flash/io_engine.h"
#include "gguf/gguf.h"
#include "model/token_embedding.h"

namespace flashlm {

class FlashEmbedding : public TokenEmbedding {
 public:
  // Rows read per batch of requests; bounds the read buffer (see buffer_bytes()).
  static constexpr size_t kRowsPerRead = 64;
  // The bytes of DRAM the reads land in, for a table with `row_bytes` rows on a file system
  // with O_DIRECT `alignment`.
  static uint64_t buffer_bytes(uint64_t row_bytes, uint64_t alignment);

  // `table`: the embedding tensor (vocab rows of d_model values) of the file at `path`.
  FlashEmbedding(const std::string& path, const GgufTensor& table, IoBackend backend);

  void rows(std::span<const int32_t> tokens, float* out) override;

  uint64_t bytes_read() const { return bytes_read_; }

 private:
  void read_rows(std::span<const int32_t> tokens, float* out);  // at most kRowsPerRead

  IoEngine io_;
  TensorType type_;
  int64_t row_values_ = 0, n_rows_ = 0;
  uint64_t table_offset_ = 0, row_bytes_ = 0, span_bytes_ = 0;
  AlignedBuffer buffer_;  // the aligned span around each row of one call, back to back
  std::vector<ReadRequest> requests_;
  uint64_t bytes_read_ = 0;
};

}  // namespace flashlm
