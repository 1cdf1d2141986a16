// The entry points of the fuzz harnesses, shared with tests/fuzz_regression_test.cpp so that
// every input a fuzzer once crashed on is replayed by the ordinary test suite.
//
// Each function feeds arbitrary bytes to one parser. It returns normally or throws
// flashlm::Error (flashlm::ApiError for the server's request parser); anything else (a crash,
// a sanitizer report, another exception) is a bug in flashlm.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace flashlm::fuzz {

// The bytes as a GGUF file: open it, then read everything a model load would read (metadata,
// config, weight views, tokenizer) and touch every tensor's first and last byte.
void gguf_file(const uint8_t* data, size_t size);
// The bytes as a .flm file: open it and verify every layer's checksum.
void flm_file(const uint8_t* data, size_t size);
// The bytes as text to encode (with and without special tokens), and as token ids to decode.
void tokenizer_text(const uint8_t* data, size_t size);
// The bytes as the body of a completion (first byte even) or chat (odd) request.
void server_request(const uint8_t* data, size_t size);

// The bytes as a sparsity file (MODEL.flm.sparse: thresholds and predictors) for a model of
// the fuzz seeds' shape (2 layers, d_model 32, d_ff 32): every level's thresholds and predictor.
void sparsity_file(const uint8_t* data, size_t size);

// The harness names, as used for seed and regression folders.
using Entry = void (*)(const uint8_t*, size_t);
Entry entry_by_name(const std::string& harness);

}  // namespace flashlm::fuzz
