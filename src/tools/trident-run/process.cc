#include "tools/trident-run/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/check.h"
#include "common/status_macros.h"

namespace trident::run {
namespace {

// What the child may do between fork() and execve(): async-signal-safe calls only.
[[noreturn]] void ExecChild(const char* path, char* const* argv, char* const* envp, int out_w,
                            int err_w, pid_t parent, int max_fd) {
  // exec keeps ignored signals ignored: SIGPIPE is ignored by the launcher, and SIGINT may
  // be by whoever started it (a shell's background job); the ranks must get the SIGINT and
  // SIGTERM that trident-run forwards.
  for (int sig : {SIGPIPE, SIGINT, SIGTERM}) signal(sig, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);  // the launcher blocks SIGCHLD/INT/TERM
  setpgid(0, 0);
  // Die with trident-run; if it already died before prctl took effect, go now.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(1);
  if (dup2(out_w, STDOUT_FILENO) < 0 || dup2(err_w, STDERR_FILENO) < 0) _exit(126);
  if (close_range(3, ~0U, 0) != 0) {
    for (int fd = 3; fd < max_fd; ++fd) close(fd);
  }
  execve(path, argv, envp);
  const int err = errno;
  const char* what = strerrordesc_np(err);
  const char* parts[] = {"trident-run: cannot execute ", path, ": ",
                         what != nullptr ? what : "unknown error", "\n"};
  for (const char* part : parts) {
    ssize_t n = write(STDERR_FILENO, part, strlen(part));
    (void)n;
  }
  _exit(err == ENOENT ? 127 : 126);
}

bool IsExecutableFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

}  // namespace

absl::StatusOr<SpawnedChild> SpawnChild(const ChildSpec& spec) {
  TRIDENT_CHECK(!spec.argv.empty()) << "a child needs argv[0]";
  // Everything the child touches is built before fork(): malloc is not safe after it.
  std::vector<char*> argv;
  for (const std::string& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& var : spec.env) envp.push_back(const_cast<char*>(var.c_str()));
  envp.push_back(nullptr);
  rlimit nofile{};
  int max_fd = ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY
                   ? static_cast<int>(std::min<rlim_t>(nofile.rlim_cur, 1 << 20))
                   : 1 << 16;

  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe2");
  if (::pipe2(err, O_CLOEXEC) != 0) {
    int e = errno;
    ::close(out[0]);
    ::close(out[1]);
    return ErrnoToStatus(e, "pipe2");
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) ExecChild(spec.path.c_str(), argv.data(), envp.data(), out[1], err[1], parent, max_fd);
  const int fork_errno = errno;
  ::close(out[1]);
  ::close(err[1]);
  if (pid < 0) {
    ::close(out[0]);
    ::close(err[0]);
    return ErrnoToStatus(fork_errno, "fork");
  }
  // Also here, so that the group exists before the parent signals it (no race with the child).
  ::setpgid(pid, pid);
  return SpawnedChild{pid, out[0], err[0]};
}

absl::StatusOr<std::string> ResolveProgram(const std::string& name, absl::string_view path_env) {
  if (name.empty()) return absl::InvalidArgumentError("empty program name");
  if (absl::StrContains(name, '/')) {
    struct stat st;
    if (::stat(name.c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat(name, ": no such file"));
    }
    return name;  // exec reports anything else (not executable, bad format)
  }
  for (absl::string_view dir : absl::StrSplit(path_env, ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    if (IsExecutableFile(candidate)) return candidate;
  }
  return absl::NotFoundError(absl::StrCat(name, ": command not found in PATH"));
}

std::string DescribeWaitStatus(int wait_status) {
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    return absl::StrCat("killed by signal ", sig, " (", SignalName(sig), ")");
  }
  return absl::StrCat("exited with status ", WEXITSTATUS(wait_status));
}

std::string DescribeExit(int rank, int wait_status) {
  return absl::StrCat("rank ", rank, " ", DescribeWaitStatus(wait_status));
}

std::vector<std::string> MergeEnvironment(char** environ_in, const std::vector<std::string>& drop,
                                          const std::vector<std::string>& set) {
  std::vector<std::string> out;
  for (char** var = environ_in; var != nullptr && *var != nullptr; ++var) {
    absl::string_view entry(*var);
    absl::string_view name = entry.substr(0, entry.find('='));
    bool dropped = false;
    for (const std::string& d : drop) dropped = dropped || name == d;
    if (!dropped) out.emplace_back(entry);
  }
  out.insert(out.end(), set.begin(), set.end());
  return out;
}

std::string RandomHex(size_t n) {
  std::string bytes(n, '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::getrandom(bytes.data() + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    TRIDENT_CHECK(r > 0) << "getrandom: " << std::strerror(errno);
    got += static_cast<size_t>(r);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * n);
  for (unsigned char c : bytes) {
    hex.push_back(kHex[c >> 4]);
    hex.push_back(kHex[c & 0xf]);
  }
  return hex;
}

}  // namespace trident::run
