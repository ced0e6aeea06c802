// Helpers for tests that run the project's binaries as a user does: a shell command with its
// output, and the path of a binary of the build.
#ifndef TRIDENT_TESTS_UTIL_SHELL_H_
#define TRIDENT_TESTS_UTIL_SHELL_H_

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"

namespace trident::testing {

struct RunResult {
  int exit_code = -1;  // 128 + signal when killed by one
  std::string output;  // stdout and stderr, interleaved
};

// Runs `command` with /bin/sh, stdout and stderr together.
inline RunResult RunCommand(const std::string& command) {
  RunResult run;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return run;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) run.output.append(buf, n);
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return run;
}

// A binary of the build: $TRIDENT_BIN_DIR (set by ctest) or ./bin.
inline std::string Bin(const std::string& name) {
  const char* dir = std::getenv("TRIDENT_BIN_DIR");
  return absl::StrCat(dir != nullptr ? dir : "bin", "/", name);
}

}  // namespace trident::testing

#endif  // TRIDENT_TESTS_UTIL_SHELL_H_
