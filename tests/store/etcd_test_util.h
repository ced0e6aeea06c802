// A real etcd for tests: 1 or 3 members on 127.0.0.1 with free ports and a temporary data
// directory, started by the test and always stopped and removed (also when the test process
// dies: the members get SIGKILL with their parent). Start() says why when it cannot run one
// (no etcd binary), so the caller can skip with that reason.
#ifndef TRIDENT_TESTS_STORE_ETCD_TEST_UTIL_H_
#define TRIDENT_TESTS_STORE_ETCD_TEST_UTIL_H_

#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace trident::testing {

// The etcd binary, or "" when there is none.
inline std::string FindEtcd() {
  if (const char* env = std::getenv("TRIDENT_ETCD_BIN"); env != nullptr && *env != '\0') return env;
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string candidate = dirs.substr(start, end - start) + "/etcd";
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return "";
}

// A port that was free a moment ago (the kernel's pick for port 0).
inline int FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  if (fd >= 0) close(fd);
  return port;
}

class EtcdCluster {
 public:
  struct Member {
    std::string name;
    int client_port = 0;
    int peer_port = 0;
    pid_t pid = -1;
    std::string endpoint() const { return absl::StrCat("127.0.0.1:", client_port); }
  };

  // Starts `members` members and waits until the cluster has a leader.
  static absl::StatusOr<std::unique_ptr<EtcdCluster>> Start(int members) {
    std::string etcd = FindEtcd();
    if (etcd.empty()) {
      return absl::FailedPreconditionError(
          "no etcd binary on PATH (install Debian's etcd-server: scripts/install-deps.sh)");
    }
    absl::Status last;
    for (int attempt = 0; attempt < 3; ++attempt) {  // a "free" port may be taken meanwhile
      auto cluster = std::unique_ptr<EtcdCluster>(new EtcdCluster(etcd));
      last = cluster->Launch(members);
      if (last.ok()) return cluster;
    }
    return last;
  }

  ~EtcdCluster() {
    for (size_t i = 0; i < members_.size(); ++i) Kill(static_cast<int>(i));
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  const std::vector<Member>& members() const { return members_; }
  std::vector<std::string> endpoints() const {
    std::vector<std::string> out;
    for (const Member& m : members_) out.push_back(m.endpoint());
    return out;
  }
  std::string Url(const std::string& job) const {
    return absl::StrCat("etcd://", absl::StrJoin(endpoints(), ","), "/", job);
  }
  bool alive(int i) const { return members_[i].pid > 0; }

  // SIGKILLs member i and reaps it.
  void Kill(int i) {
    Member& m = members_[i];
    if (m.pid <= 0) return;
    kill(m.pid, SIGKILL);
    int status = 0;
    while (waitpid(m.pid, &status, 0) < 0 && errno == EINTR) {
    }
    m.pid = -1;
  }

  // The index of the member that is leader now, asked of the live members; -1 if none knows.
  int Leader() const {
    for (const Member& m : members_) {
      if (m.pid <= 0) continue;
      nlohmann::json status = Post(m, "/v3/maintenance/status", "{}");
      if (!status.is_object() || !status.contains("leader")) continue;
      std::string leader = status["leader"].get<std::string>();
      for (size_t i = 0; i < members_.size(); ++i) {
        if (members_[i].pid <= 0) continue;
        nlohmann::json s = Post(members_[i], "/v3/maintenance/status", "{}");
        if (s.is_object() && s.contains("header") &&
            s["header"].value("member_id", std::string()) == leader) {
          return static_cast<int>(i);
        }
      }
    }
    return -1;
  }

  std::string log(int i) const { return dir_ + "/" + members_[i].name + ".log"; }

 private:
  explicit EtcdCluster(std::string etcd) : etcd_(std::move(etcd)) {
    // tmpfs when there is one: etcd fsyncs every write, which a shared disk makes slow.
    std::string base = std::filesystem::is_directory("/dev/shm")
                           ? "/dev/shm"
                           : std::filesystem::temp_directory_path().string();
    std::string tmpl = base + "/trident-etcd-XXXXXX";
    if (mkdtemp(tmpl.data()) != nullptr) dir_ = tmpl;
  }

  static nlohmann::json Post(const Member& m, const std::string& path, const std::string& body) {
    httplib::Client cli("127.0.0.1", m.client_port);
    cli.set_connection_timeout(0, 300000);
    cli.set_read_timeout(1, 0);
    httplib::Result res = cli.Post(path, body, "application/json");
    if (!res || res->status != 200) return nlohmann::json();
    return nlohmann::json::parse(res->body, nullptr, false);
  }

  absl::Status Launch(int n) {
    if (dir_.empty()) return absl::InternalError("mkdtemp for the etcd data failed");
    std::vector<std::string> initial;
    for (int i = 0; i < n; ++i) {
      Member m;
      m.name = absl::StrCat("m", i);
      m.client_port = FreeLoopbackPort();
      m.peer_port = FreeLoopbackPort();
      initial.push_back(absl::StrCat(m.name, "=http://127.0.0.1:", m.peer_port));
      members_.push_back(m);
    }
    const std::string cluster = absl::StrJoin(initial, ",");
    for (Member& m : members_) {
      std::string client = absl::StrCat("http://127.0.0.1:", m.client_port);
      std::string peer = absl::StrCat("http://127.0.0.1:", m.peer_port);
      std::vector<std::string> args = {
          etcd_, "--name", m.name, "--data-dir", dir_ + "/" + m.name + ".etcd",
          "--listen-client-urls", client, "--advertise-client-urls", client,
          "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
          "--initial-cluster", cluster, "--initial-cluster-state", "new",
          "--initial-cluster-token", dir_,
          // Values up to Store::kMaxValueBytes (64 MiB) travel base64 in JSON.
          "--max-request-bytes", std::to_string(100 << 20),
          // Quick elections, so the leader test is quick (defaults: 100 ms / 1000 ms).
          "--heartbeat-interval", "50", "--election-timeout", "500",
          "--log-level", "warn", "--logger", "zap"};
      std::string log_path = dir_ + "/" + m.name + ".log";
      pid_t parent = getpid();
      pid_t pid = fork();
      if (pid < 0) return absl::InternalError("fork for etcd failed");
      if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        FILE* log = freopen(log_path.c_str(), "w", stdout);
        if (log != nullptr) dup2(fileno(stdout), 2);
        std::vector<char*> argv;
        for (std::string& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        execv(argv[0], argv.data());
        _exit(127);
      }
      m.pid = pid;
    }
    // Ready: every member answers and one of them is leader.
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      bool all = true;
      for (Member& m : members_) {
        int status = 0;
        if (waitpid(m.pid, &status, WNOHANG) == m.pid) {
          m.pid = -1;
          return absl::UnavailableError(
              absl::StrCat("etcd member ", m.name, " exited at start; see ", log_path(m)));
        }
        if (!Post(m, "/v3/maintenance/status", "{}").is_object()) all = false;
      }
      if (all && Leader() >= 0) return absl::OkStatus();
      absl::SleepFor(absl::Milliseconds(50));
    }
    return absl::DeadlineExceededError(
        absl::StrCat("etcd cluster of ", n, " did not elect a leader in 30 s; logs in ", dir_));
  }

  std::string log_path(const Member& m) const { return dir_ + "/" + m.name + ".log"; }

  std::string etcd_;
  std::string dir_;
  std::vector<Member> members_;
};

}  // namespace trident::testing

#endif  // TRIDENT_TESTS_STORE_ETCD_TEST_UTIL_H_
