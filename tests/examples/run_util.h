// The losses in lm-trainer's logfmt lines (with tests/util/shell.h, what the tests that run
// lm-trainer as a user does need).
#ifndef TRIDENT_TESTS_EXAMPLES_RUN_UTIL_H_
#define TRIDENT_TESTS_EXAMPLES_RUN_UTIL_H_

#include <map>
#include <regex>
#include <string>

#include "../util/shell.h"

namespace lm::testing {

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
