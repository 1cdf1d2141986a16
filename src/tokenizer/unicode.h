// The bits of Unicode the tokenizers need: UTF-8 decoding and the letter / number / space
// classes that the pre-tokenizer patterns (\p{L}, \p{N}, \s) test.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace flashlm {

// Decodes the UTF-8 sequence at s[i] (advancing i); invalid bytes decode as themselves,
// one byte each, so every input round-trips.
uint32_t next_codepoint(std::string_view s, size_t& i);
void append_utf8(std::string& out, uint32_t cp);
// Length of the UTF-8 sequence that starts with byte b (1 for invalid lead bytes).
size_t utf8_length(uint8_t b);

bool is_letter(uint32_t cp);
bool is_number(uint32_t cp);
bool is_space(uint32_t cp);

}  // namespace flashlm
