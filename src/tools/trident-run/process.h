// Starting and describing the rank processes of trident-run.
//
// SpawnChild forks and execs one child in its own process group, with its stdout and stderr
// on fresh pipes, every other descriptor closed, an empty signal mask, and PR_SET_PDEATHSIG
// so that it is SIGKILLed if trident-run dies. PR_SET_PDEATHSIG fires when the *thread* that
// forked exits, so call SpawnChild from a thread that lives as long as the child (main).
#ifndef TRIDENT_TOOLS_TRIDENT_RUN_PROCESS_H_
#define TRIDENT_TOOLS_TRIDENT_RUN_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "trident/failure.h"  // SignalName

namespace trident::run {

struct ChildSpec {
  std::string path;               // executable, as ResolveProgram returns it
  std::vector<std::string> argv;  // argv[0] first
  std::vector<std::string> env;   // "NAME=value", the child's whole environment
};

struct SpawnedChild {
  pid_t pid = -1;      // also its process group id
  int stdout_fd = -1;  // read ends of its pipes, close-on-exec; the caller owns them
  int stderr_fd = -1;
};

absl::StatusOr<SpawnedChild> SpawnChild(const ChildSpec& spec);

// Finds `name` as execvp() would: a name containing '/' is taken as is, otherwise each
// directory of `path_env` (colon-separated; empty entries mean ".") is searched for an
// executable file. kNotFound when there is none. Resolving before fork() keeps the child
// to async-signal-safe calls.
absl::StatusOr<std::string> ResolveProgram(const std::string& name, absl::string_view path_env);

// "rank 2 exited with status 3", "rank 2 killed by signal 9 (SIGKILL)", or, for status 0,
// "rank 2 exited with status 0". `wait_status` is what waitpid() returned.
std::string DescribeExit(int rank, int wait_status);
// The same without the rank: "exited with status 3", "killed by signal 9 (SIGKILL)".
std::string DescribeWaitStatus(int wait_status);

// `environ` as a list, minus every variable named in `drop`, plus `set` ("NAME=value") at
// the end.
std::vector<std::string> MergeEnvironment(char** environ_in, const std::vector<std::string>& drop,
                                          const std::vector<std::string>& set);

// `n` random bytes from getrandom(), hex-encoded (2n characters). CHECK-fails if the kernel
// cannot supply them: a job must never run with a guessable token.
std::string RandomHex(size_t n);

}  // namespace trident::run

#endif  // TRIDENT_TOOLS_TRIDENT_RUN_PROCESS_H_
