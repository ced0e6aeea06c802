// ConnectStore: picks a Store implementation from a URL (what trident-run puts in
// TRIDENT_STORE).
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/params.h"
#include "common/status_macros.h"
#include "store/etcd_store.h"
#include "trident/store.h"

namespace trident {
namespace {

constexpr char kAcceptedForms[] =
    "tcp://host:port, tcp://[ipv6]:port, file:///absolute/dir or "
    "etcd://host:port[,host:port...]/JOB";

absl::Status BadUrl(absl::string_view url, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("store URL '", url, "' ", why, "; expected ", kAcceptedForms));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> ConnectStore(absl::string_view url, std::string job_token,
                                                    absl::Time deadline) {
  if (absl::StartsWith(url, "tcp://")) {
    absl::string_view rest = url.substr(6);
    size_t colon = rest.rfind(':');
    if (colon == absl::string_view::npos) return BadUrl(url, "has no port");
    absl::string_view host = rest.substr(0, colon);
    absl::string_view port_str = rest.substr(colon + 1);
    if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) {
      host = host.substr(1, host.size() - 2);
    }
    int port = 0;
    if (host.empty()) return BadUrl(url, "has no host");
    if (!absl::SimpleAtoi(port_str, &port) || port <= 0 || port > 65535) {
      return BadUrl(url, "has no valid port");
    }
    return NewTcpStore(std::string(host), port, std::move(job_token), deadline);
  }
  if (absl::StartsWith(url, "file://")) {
    absl::string_view path = url.substr(7);
    if (!absl::StartsWith(path, "/")) return BadUrl(url, "does not name an absolute directory");
    return NewFileStore(std::string(path));
  }
  if (absl::StartsWith(url, "etcd://")) {
    // etcd does the access control (none yet: docs/multinode.md); the job token is not sent.
    absl::StatusOr<EtcdStoreOptions> options = ParseEtcdUrl(url);
    if (!options.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(options.status().message(), " (store URLs: ", kAcceptedForms, ")"));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<EtcdStore> store, NewEtcdStore(*std::move(options), deadline));
    return std::unique_ptr<Store>(std::move(store));
  }
  return BadUrl(url, "has an unknown scheme");
}

absl::StatusOr<std::unique_ptr<Store>> ConnectStoreFromEnv(absl::Time deadline) {
  std::string url = ParamString("TRIDENT_STORE");
  if (url.empty()) {
    return absl::InvalidArgumentError(
        "TRIDENT_STORE is not set: run this program under trident-run, or set TRIDENT_STORE to "
        "tcp://host:port, file:///absolute/dir or etcd://host:port[,host:port...]/JOB (and "
        "TRIDENT_JOB_TOKEN to the job's token)");
  }
  return ConnectStore(url, ParamString("TRIDENT_JOB_TOKEN"), deadline);
}

}  // namespace trident
