// trident/cli.h: command-line helpers for programs that parse flags with Abseil (Trident's
// tools and examples; yours too): the dashed spelling of flag names ("--min-bytes" for the
// flag min_bytes) and --help lines. Header-only: only programs that link absl::flags include
// it, and the trident library does not.
#ifndef TRIDENT_CLI_H_
#define TRIDENT_CLI_H_

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/string_view.h"

namespace trident::cli {

// "min_bytes" -> "min-bytes".
inline std::string DashName(absl::string_view name) {
  std::string s(name);
  std::replace(s.begin(), s.end(), '_', '-');
  return s;
}

// Rewrites "--min-bytes=4K" to "--min_bytes=4K" (Abseil flag names are identifiers) and "-h"
// to "--help", up to a "--". `storage` owns the strings the returned pointers point into.
inline std::vector<char*> NormalizeArgs(int argc, char** argv,
                                        std::vector<std::string>& storage) {
  storage.assign(argv, argv + argc);
  for (size_t i = 1; i < storage.size(); ++i) {
    std::string& a = storage[i];
    if (a == "--") break;
    if (a == "-h") a = "--help";
    if (a.size() > 2 && a.compare(0, 2, "--") == 0) {
      const size_t end = std::min(a.find('='), a.size());
      std::replace(a.begin() + 2, a.begin() + static_cast<std::ptrdiff_t>(end), '-', '_');
    }
  }
  std::vector<char*> out;
  for (std::string& s : storage) out.push_back(s.data());
  return out;
}

// True when "--help" comes before any "--" (after NormalizeArgs).
inline bool WantsHelp(const std::vector<char*>& args) {
  for (size_t i = 1; i < args.size(); ++i) {
    const absl::string_view a = args[i];
    if (a == "--") return false;
    if (a == "--help") return true;
  }
  return false;
}

// One --help line: "  --name        help (default: value)".
template <typename T>
void PrintFlag(const absl::Flag<T>& flag, int width = 12) {
  const absl::CommandLineFlag& f = absl::GetFlagReflectionHandle(flag);
  const std::string def = f.DefaultValue();
  std::printf("  --%-*s %s (default: %s)\n", width, DashName(f.Name()).c_str(), f.Help().c_str(),
              def.empty() ? "\"\"" : def.c_str());
}

}  // namespace trident::cli

#endif  // TRIDENT_CLI_H_
