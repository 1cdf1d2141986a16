#include "common/text_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace flashlm {

std::string read_text_file(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {} '{}': {}", what, path, std::strerror(errno));
  std::stringstream s;
  s << in.rdbuf();
  if (in.bad()) fail("reading {} '{}' failed", what, path);
  return s.str();
}

}  // namespace flashlm
