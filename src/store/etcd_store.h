// EtcdStore: the Store of store.h kept in etcd 3.4 (Debian's etcd-server), through the JSON
// gateway of its v3 API (POST /v3/kv/range, put, txn, deleterange, /v3/lease/*, /v3/watch;
// keys and values base64). URL: etcd://host:port[,host:port...]/JOB. Every key of the job lives
// under "/trident/JOB/" in etcd, so jobs sharing one etcd never see each other's keys.
//
// - Several endpoints: a call goes to the endpoint that answered last; when it cannot be
//   reached, or answers that it has no leader, the call moves on to the next one, round robin,
//   with backoff, until the call's deadline. kUnavailable then names every endpoint and the last
//   error of each.
// - Add and CompareSet are read-then-transaction loops: the transaction commits only if the
//   key's mod_revision is still the one read (etcd's compare-and-set), else it reads again.
//   An Add whose transaction was sent but whose answer was lost (connection dropped mid-call,
//   or "request timed out") is NOT retried: it fails with kUnavailable saying the outcome is
//   unknown, because retrying could add twice. Every other call is safe to retry and is.
// - Get and Wait read, then watch the missing keys from the revision they read (no polling, no
//   missed write); the watch asks the member to have a leader (a partitioned member cancels it).
// - Leases: GrantLease returns a handle whose thread renews the lease every ttl/3 through any
//   endpoint; a key put with the lease (PutWithLease) lives while the handle renews it. When no
//   renewal succeeds within the ttl the lease is lost: lost() turns true, status() says why, and
//   etcd deletes the keys. Destroying the handle stops the thread and revokes the lease (the
//   keys go at once); Abandon() stops renewing without revoking (what a crashed agent does).
//
// Limits: etcd refuses requests over its --max-request-bytes (1.5 MiB by default), so values
// over about 1 MiB need an etcd started with a larger limit; the error says so. No TLS or
// etcd authentication yet; the job token is not checked by etcd (see docs/multinode.md).
#ifndef TRIDENT_STORE_ETCD_STORE_H_
#define TRIDENT_STORE_ETCD_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "trident/store.h"

namespace trident {

struct EtcdStoreOptions {
  std::vector<std::string> endpoints;  // "host:port" or "[v6]:port", in the order to try them
  std::string job;                     // keys live under "/trident/<job>/"
  // A connection attempt to one endpoint gives up after this (then the next endpoint is
  // tried), so a host that drops packets does not eat the whole deadline.
  absl::Duration connect_timeout = absl::Milliseconds(1000);
};

// Parses "etcd://h1:p1[,h2:p2...]/JOB". kInvalidArgument says what is wrong and the form.
absl::StatusOr<EtcdStoreOptions> ParseEtcdUrl(absl::string_view url);

namespace etcd_internal {
class Client;
}

// A lease kept alive by its own thread. Thread-safe.
class EtcdLease {
 public:
  ~EtcdLease();  // stops renewing and revokes the lease (bounded by about a second)
  EtcdLease(const EtcdLease&) = delete;
  EtcdLease& operator=(const EtcdLease&) = delete;

  int64_t id() const { return id_; }
  absl::Duration ttl() const { return ttl_; }
  // True once a renewal failed past the ttl, or etcd said the lease is gone.
  bool lost() const;
  // OK while alive; else why the lease was lost (endpoints tried, last error).
  absl::Status status() const;
  // Stops renewing without revoking: etcd expires the lease (and deletes its keys) after the
  // ttl, as for an agent that died. Idempotent.
  void Abandon();

 private:
  friend class EtcdStore;
  struct State;
  EtcdLease(std::shared_ptr<etcd_internal::Client> client, int64_t id, absl::Duration ttl);
  void Run();

  std::shared_ptr<etcd_internal::Client> client_;
  const int64_t id_;
  const absl::Duration ttl_;
  std::shared_ptr<State> state_;
};

class EtcdStore final : public Store {
 public:
  ~EtcdStore() override;

  absl::Status Set(absl::string_view key, absl::string_view value, absl::Time deadline) override;
  absl::StatusOr<std::string> Get(absl::string_view key, absl::Time deadline) override;
  absl::StatusOr<std::string> TryGet(absl::string_view key, absl::Time deadline) override;
  absl::StatusOr<int64_t> Add(absl::string_view key, int64_t delta, absl::Time deadline) override;
  absl::StatusOr<std::string> CompareSet(absl::string_view key, absl::string_view expected,
                                         absl::string_view desired, absl::Time deadline) override;
  absl::Status Wait(absl::Span<const std::string> keys, absl::Time deadline) override;
  absl::StatusOr<bool> Delete(absl::string_view key, absl::Time deadline) override;
  absl::StatusOr<std::vector<std::string>> ListPrefix(absl::string_view prefix,
                                                      absl::Time deadline) override;

  // Grants a lease of `ttl` (whole seconds, at least 1 s: etcd's unit) and starts renewing it.
  absl::StatusOr<std::unique_ptr<EtcdLease>> GrantLease(absl::Duration ttl, absl::Time deadline);
  // Sets key to value attached to the lease: the key is deleted when the lease ends.
  absl::Status PutWithLease(absl::string_view key, absl::string_view value, const EtcdLease& lease,
                            absl::Time deadline);
  // "This key lives while I live": a new lease of `ttl`, the key put with it.
  absl::StatusOr<std::unique_ptr<EtcdLease>> SetWhileAlive(absl::string_view key,
                                                           absl::string_view value,
                                                           absl::Duration ttl, absl::Time deadline);

  // The endpoint the next call goes to first ("host:port"); tests use it to find the one to kill.
  std::string preferred_endpoint() const;

 private:
  friend absl::StatusOr<std::unique_ptr<EtcdStore>> NewEtcdStore(EtcdStoreOptions, absl::Time);
  explicit EtcdStore(std::shared_ptr<etcd_internal::Client> client);
  std::shared_ptr<etcd_internal::Client> client_;
};

// Connects (one range request, so an unreachable etcd shows now, within the deadline).
absl::StatusOr<std::unique_ptr<EtcdStore>> NewEtcdStore(EtcdStoreOptions options,
                                                        absl::Time deadline);

}  // namespace trident

#endif  // TRIDENT_STORE_ETCD_STORE_H_
