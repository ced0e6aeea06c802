// Helpers for the tests that run lm-trainer as a user does: shell commands with their output,
// and the losses in lm-trainer's logfmt lines.
#ifndef TRIDENT_TESTS_EXAMPLES_RUN_UTIL_H_
#define TRIDENT_TESTS_EXAMPLES_RUN_UTIL_H_

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <regex>
#include <string>

#include "absl/strings/str_cat.h"

namespace lm::testing {

// A binary of the build (TRIDENT_BIN_DIR, set by ctest).
inline std::string Bin(const std::string& name) {
  const char* dir = std::getenv("TRIDENT_BIN_DIR");
  return absl::StrCat(dir != nullptr ? dir : ".", "/", name);
}

struct Output {
  int exit_code = -1;  // -1: killed by a signal
  std::string text;    // stdout and stderr
};

// Runs `command` with bash, stdout and stderr together.
inline Output RunShell(const std::string& command) {
  Output out;
  FILE* pipe = popen(absl::StrCat("bash -c '", command, "' 2>&1").c_str(), "r");
  if (pipe == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.text.append(buf, n);
  const int status = pclose(pipe);
  out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// step -> loss from "step=N loss=X" lines (with or without trident-run's prefix).
inline std::map<int, double> Losses(const std::string& text) {
  std::map<int, double> losses;
  static const std::regex line(R"(step=(\d+) loss=([0-9.]+))");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), line);
       it != std::sregex_iterator(); ++it) {
    losses[std::stoi((*it)[1])] = std::stod((*it)[2]);
  }
  return losses;
}

}  // namespace lm::testing

#endif  // TRIDENT_TESTS_EXAMPLES_RUN_UTIL_H_
