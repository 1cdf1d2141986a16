// Whole text files (prompts, calibration and evaluation text) read into memory.
#pragma once

#include <string>
#include <string_view>

namespace flashlm {

// The bytes of `path`; fails naming `what` ("prompt file", "text file") and the path.
std::string read_text_file(const std::string& path, std::string_view what);

}  // namespace flashlm
