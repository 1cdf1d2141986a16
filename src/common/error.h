// The one way flashlm reports errors: throw flashlm::Error with a message that says what is
// wrong and what to do about it. The CLI catches it at the top and prints it on one line.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace flashlm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace flashlm
