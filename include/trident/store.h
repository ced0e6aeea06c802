// trident/store.h: the key-value store that ranks use to meet (rendezvous), exchange endpoint
// addresses, allocate ids and publish failures.
//
// Implementations: TcpStore (a client of the server that trident-run hosts; reconnects after a
// dropped connection), FileStore (a directory shared by all ranks), MemoryStore (in-process,
// for tests). PrefixStore namespaces any of them.
//
// Every call takes a deadline and never blocks past it. Errors:
//   kInvalidArgument   empty key, key over kMaxKeyBytes, value over kMaxValueBytes
//   kDeadlineExceeded  Get/Wait: the key did not appear in time (the message names it)
//   kUnavailable       the store could not be reached before the deadline; retry later
//   kPermissionDenied  the server refused this client's job token
// All methods are thread-safe.
//
//   ASSIGN_OR_RETURN(auto store, trident::ConnectStore("tcp://127.0.0.1:29400", token));
//   store->Set("addr/3", my_address, trident::DeadlineIn(absl::Seconds(10)));
//   auto peer = store->Get("addr/0", trident::DeadlineIn(absl::Seconds(10)));
#ifndef TRIDENT_STORE_H_
#define TRIDENT_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace trident {

inline absl::Time DeadlineIn(absl::Duration d) { return absl::Now() + d; }

class Store {
 public:
  static constexpr size_t kMaxKeyBytes = 4096;
  static constexpr size_t kMaxValueBytes = 64 << 20;  // 64 MiB

  virtual ~Store() = default;

  // Sets key to value, replacing any previous value.
  virtual absl::Status Set(absl::string_view key, absl::string_view value, absl::Time deadline) = 0;
  // Returns the value of key, waiting until the key exists or the deadline passes.
  virtual absl::StatusOr<std::string> Get(absl::string_view key, absl::Time deadline) = 0;
  // Returns the value of key now, or kNotFound.
  virtual absl::StatusOr<std::string> TryGet(absl::string_view key, absl::Time deadline) = 0;
  // Atomically adds delta to the integer at key (absent = 0) and returns the new value.
  virtual absl::StatusOr<int64_t> Add(absl::string_view key, int64_t delta,
                                      absl::Time deadline) = 0;
  // Atomically: if the key's value equals `expected` (an absent key equals ""), sets it to
  // `desired`. Returns the value the key holds afterwards.
  virtual absl::StatusOr<std::string> CompareSet(absl::string_view key, absl::string_view expected,
                                                 absl::string_view desired,
                                                 absl::Time deadline) = 0;
  // Waits until every key exists. kDeadlineExceeded names the keys still missing.
  virtual absl::Status Wait(absl::Span<const std::string> keys, absl::Time deadline) = 0;
  // Deletes key; returns whether it existed.
  virtual absl::StatusOr<bool> Delete(absl::string_view key, absl::Time deadline) = 0;
  // Returns every key that starts with prefix, sorted.
  virtual absl::StatusOr<std::vector<std::string>> ListPrefix(absl::string_view prefix,
                                                              absl::Time deadline) = 0;
};


std::unique_ptr<Store> NewMemoryStore();
// A store in a directory that every rank can see; created if missing.
absl::StatusOr<std::unique_ptr<Store>> NewFileStore(const std::string& dir);
// A client of a TcpStoreServer at host:port, proving membership with the job token.
absl::StatusOr<std::unique_ptr<Store>> NewTcpStore(const std::string& host, int port,
                                                   std::string job_token, absl::Time deadline);
// Every key is read and written as prefix + key; ListPrefix strips the prefix again.
std::unique_ptr<Store> NewPrefixStore(std::string prefix, std::shared_ptr<Store> base);

// Connects to a store from a URL: "tcp://host:port" or "file:///path".
absl::StatusOr<std::unique_ptr<Store>> ConnectStore(absl::string_view url, std::string job_token,
                                                    absl::Time deadline);
// Connects to TRIDENT_STORE with TRIDENT_JOB_TOKEN, as set by trident-run.
absl::StatusOr<std::unique_ptr<Store>> ConnectStoreFromEnv(absl::Time deadline);

// The server behind TcpStore; trident-run hosts one per job. Serves on its own thread until
// destroyed. Clients must present `job_token` (compared in constant time); a client that does
// not, or that sends a malformed or oversized request, is logged and disconnected, and nothing
// else is affected.
class TcpStoreServer {
 public:
  virtual ~TcpStoreServer() = default;
  virtual int port() const = 0;
  virtual std::string host() const = 0;
  // Stops serving and closes every connection (tests use it to simulate a dead server).
  virtual void Shutdown() = 0;
};

struct TcpStoreServerOptions {
  std::string bind_address = "127.0.0.1";  // loopback unless told otherwise
  int port = 0;                            // 0 picks a free port
  std::string job_token;                   // empty: no token required (tests only)
};
absl::StatusOr<std::unique_ptr<TcpStoreServer>> StartTcpStoreServer(
    const TcpStoreServerOptions& options);

}  // namespace trident

#endif  // TRIDENT_STORE_H_
