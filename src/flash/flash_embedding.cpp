#include "flash/flash_embedding.h"

#include <algorithm>

#include "common/error.h"
#include "quant/kernels.h"
#include "quant/types.h"

namespace flashlm {

FlashEmbedding::FlashEmbedding(const std::string& path, const GgufTensor& table, IoBackend backend)
    : io_(path, backend),
      type_(table.type),
      row_values_(table.dims.empty() ? 0 : table.dims[0]),
      n_rows_(table.rows()),
      table_offset_(table.offset),
      row_bytes_(row_bytes(table.type, row_values_)) {
  if (row_values_ <= 0 || n_rows_ <= 0 || row_bytes_ * n_rows_ != table.bytes) {
    fail(
        "'{}': tensor '{}' ({} bytes) is not a table of {} rows of {} values; the file is "
        "corrupt",
        path, table.name, table.bytes, n_rows_, row_values_);
  }
  // A row's aligned span: the alignment units it touches, at most one more than its own size.
  span_bytes_ = align_up(row_bytes_, io_.alignment()) + io_.alignment();
  buffer_ = AlignedBuffer(buffer_bytes(row_bytes_, io_.alignment()));
}

uint64_t FlashEmbedding::buffer_bytes(uint64_t row_bytes, uint64_t alignment) {
  return kRowsPerRead * (align_up(row_bytes, alignment) + alignment);
}

void FlashEmbedding::rows(std::span<const int32_t> tokens, float* out) {
  for (size_t first = 0; first < tokens.size(); first += kRowsPerRead) {
    const auto some = tokens.subspan(first, std::min(kRowsPerRead, tokens.size() - first));
    read_rows(some, out + first * row_values_);
  }
}

void FlashEmbedding::read_rows(std::span<const int32_t> tokens, float* out) {
  const uint64_t align = io_.alignment();
  requests_.clear();
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t] < 0 || tokens[t] >= n_rows_) {
      fail("internal error: token {} outside the embedding table of {} rows", tokens[t], n_rows_);
    }
    const uint64_t start = table_offset_ + static_cast<uint64_t>(tokens[t]) * row_bytes_;
    const uint64_t first = align_down(start, align);
    const uint64_t last = align_up(start + row_bytes_, align);
    requests_.push_back(
        {first, static_cast<uint32_t>(last - first), buffer_.data() + t * span_bytes_});
    bytes_read_ += last - first;
  }
  io_.read_all(requests_);
  for (size_t t = 0; t < tokens.size(); ++t) {
    const uint64_t start = table_offset_ + static_cast<uint64_t>(tokens[t]) * row_bytes_;
    const uint8_t* row = requests_[t].dest + (start - requests_[t].offset);
    dequantize_row(type_, row, out + t * row_values_, row_values_);
  }
}

}  // namespace flashlm
