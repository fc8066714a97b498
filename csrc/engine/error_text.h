// The one line of an exception that a user should read, shared by the engine's files.
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <regex>
#include <sstream>
#include <string>

// The line of an exception that says what went wrong. libtorch's own errors carry a C++ backtrace,
// and an exception raised inside a TorchScript model comes wrapped as "The following operation
// failed in the TorchScript interpreter" with a traceback of the serialized code: the model's own
// message is the last "...Error: text" line of it.
inline std::string readable(const std::exception& e) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&e);
  const std::string message = torch_error ? torch_error->what_without_backtrace() : e.what();
  if (message.find("failed in the TorchScript interpreter") != std::string::npos) {
    static const std::regex raised(R"(^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.*\S))");
    std::istringstream lines(message);
    std::string line, found;
    std::smatch match;
    while (std::getline(lines, line)) {
      if (std::regex_search(line, match, raised)) found = std::string(match[1]) + ": " + std::string(match[2]);
    }
    if (!found.empty()) return found;
  }
  return message.substr(0, message.find('\n'));
}
