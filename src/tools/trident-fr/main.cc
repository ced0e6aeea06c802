// trident-fr DIR: reads the flight-recorder dumps (fr-*.json) that the ranks of a job wrote
// under DIR and says which rank is behind, which never issued an op, which issued a different
// one, and which is stuck outside any op. Exit status: 0 when the dumps were read, 2 on usage
// errors, 1 when DIR has no dump.
#include <cstdio>
#include <string>

#include "tools/trident-fr/analyze.h"

int main(int argc, char** argv) {
  if (argc != 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fprintf(argc == 2 ? stdout : stderr,
                 "usage: trident-fr DIR\n"
                 "  Reads the flight-recorder dumps fr-*.json under DIR (TRIDENT_FR_DIR of the\n"
                 "  job) and names, per communicator: the ranks that never issued sequence N,\n"
                 "  the ranks that issued a different op/dtype/count at N, the ranks behind,\n"
                 "  the ranks waiting in an op and the ranks stuck outside any op.\n");
    return argc == 2 ? 0 : 2;
  }
  absl::StatusOr<trident::fr::Analysis> a = trident::fr::AnalyzeDir(argv[1]);
  if (!a.ok()) {
    std::fprintf(stderr, "%s\n", std::string(a.status().message()).c_str());
    return 1;
  }
  std::fputs(a->Text().c_str(), stdout);
  std::printf("verdict: %s\n", a->Verdict().c_str());
  return 0;
}
