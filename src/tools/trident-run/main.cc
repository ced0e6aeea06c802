// trident-run: starts the ranks of a job on this host and watches them. See UsageText()
// in options.cc, and launcher.h for what happens when a rank fails.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/logging.h"
#include "common/params.h"
#include "transport/fabric/fabric_transport.h"
#include "tools/trident-run/launcher.h"
#include "tools/trident-run/options.h"
#include "tools/trident-run/output_relay.h"

namespace {

// A closed stdin, stdout or stderr would be taken by the next open() (a pipe, a socket) and
// written to by accident; park /dev/null there instead.
void EnsureStandardDescriptors() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) < 0) {
      int null_fd = ::open("/dev/null", O_RDWR);
      if (null_fd >= 0 && null_fd != fd) {
        ::dup2(null_fd, fd);
        ::close(null_fd);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  using trident::run::LaunchOptions;
  EnsureStandardDescriptors();
  // libinfinipath (loaded with libfabric) takes over SIGSEGV, SIGABRT, SIGTERM, ... at load
  // and writes .btr files where a process crashes: not in the ranks (they inherit this
  // environment; a value the user set wins), and not here.
  setenv("IPATH_NO_BACKTRACE", "1", /*overwrite=*/0);
  trident::QuietUnusedProviders();
  trident::InitLogging("launcher");
  // trident-run's stderr carries the ranks' stderr and its own one-line reports; library
  // chatter at info (the store server starting and stopping) would only be noise there.
  if (std::getenv("TRIDENT_LOG_LEVEL") == nullptr) {
    trident::Logger().set_level(spdlog::level::warn);
  }

  std::vector<std::string> args(argv + 1, argv + argc);
  absl::StatusOr<LaunchOptions> options = trident::run::ParseArgs(args);
  if (!options.ok()) {
    std::fprintf(stderr, "trident-run: %s\nRun 'trident-run --help' for usage.\n",
                 std::string(options.status().message()).c_str());
    return trident::run::kExitUsage;
  }
  // A bad TRIDENT_* setting is a usage error, reported before anything starts (every rank
  // would inherit it).
  const absl::Status params = trident::CheckParams();
  switch (options->action) {
    case LaunchOptions::Action::kHelp:
      std::fputs(trident::run::UsageText().c_str(), stdout);
      return trident::run::kExitOk;
    case LaunchOptions::Action::kPrintParams:
      std::fputs(trident::DescribeParams().c_str(), stdout);
      if (!params.ok()) {
        std::fprintf(stderr, "trident-run: %s\n", std::string(params.message()).c_str());
        return trident::run::kExitUsage;
      }
      return trident::run::kExitOk;
    case LaunchOptions::Action::kRun:
      break;
  }
  if (!params.ok()) {
    std::fprintf(stderr, "trident-run: %s\n", std::string(params.message()).c_str());
    return trident::run::kExitUsage;
  }
  trident::run::OutputWriter out(STDOUT_FILENO, STDERR_FILENO);
  trident::run::Launcher launcher(*std::move(options), &out);
  return launcher.Run();
}
