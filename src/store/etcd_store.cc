// EtcdStore: see etcd_store.h. The HTTP client is cpp-httplib (Debian's libcpp-httplib-dev),
// JSON is nlohmann's; base64 is Abseil's.
#include "store/etcd_store.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/backoff.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "store/kv_map.h"

namespace trident {

using json = nlohmann::json;

namespace {

constexpr char kUrlForm[] = "etcd://host:port[,host:port...]/JOB";
constexpr absl::Duration kFirstBackoff = absl::Milliseconds(10);
constexpr absl::Duration kMaxBackoff = absl::Milliseconds(500);
constexpr size_t kMaxIdlePerEndpoint = 4;
// etcd's default --max-txn-ops is 128; Wait reads its keys in transactions of this many ranges.
constexpr size_t kRangesPerTxn = 64;

std::string B64(absl::string_view s) { return absl::Base64Escape(s); }

std::string UnB64(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_string()) return "";  // the gateway omits empty fields
  std::string out;
  absl::Base64Unescape(it->get<std::string>(), &out);
  return out;
}

// The gateway writes int64 as a JSON string, and omits zeros.
int64_t Int(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  int64_t v = 0;
  if (it->is_string()) (void)absl::SimpleAtoi(it->get<std::string>(), &v);
  return v;
}

// The end of the range of every key that starts with `prefix` (etcd's "prefix end").
std::string PrefixEnd(absl::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    unsigned char last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

void SetTimeouts(httplib::Client& cli, absl::Duration connect, absl::Duration io) {
  auto split = [](absl::Duration d, time_t* sec, time_t* usec) {
    int64_t us = std::max<int64_t>(absl::ToInt64Microseconds(d), 1000);
    *sec = static_cast<time_t>(us / 1000000);
    *usec = static_cast<time_t>(us % 1000000);
  };
  time_t s, u;
  split(connect, &s, &u);
  cli.set_connection_timeout(s, u);
  split(io, &s, &u);
  cli.set_read_timeout(s, u);
  cli.set_write_timeout(s, u);
}

}  // namespace

absl::StatusOr<EtcdStoreOptions> ParseEtcdUrl(absl::string_view url) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("store URL '", url, "' ", why, "; expected ", kUrlForm));
  };
  if (!absl::StartsWith(url, "etcd://")) return bad("is not an etcd URL");
  absl::string_view rest = url.substr(7);
  size_t slash = rest.find('/');
  if (slash == absl::string_view::npos) return bad("names no job after the endpoints");
  EtcdStoreOptions options;
  options.job = std::string(rest.substr(slash + 1));
  if (options.job.empty()) return bad("names no job after the endpoints");
  if (absl::StrContains(options.job, '/')) return bad("has a '/' in its job name");
  for (absl::string_view ep : absl::StrSplit(rest.substr(0, slash), ',')) {
    size_t colon = ep.rfind(':');
    if (ep.empty()) return bad("has an empty endpoint");
    if (colon == absl::string_view::npos || colon == 0) {
      return bad(absl::StrCat("has an endpoint without host:port ('", ep, "')"));
    }
    int port = 0;
    if (!absl::SimpleAtoi(ep.substr(colon + 1), &port) || port <= 0 || port > 65535) {
      return bad(absl::StrCat("has no valid port in '", ep, "'"));
    }
    options.endpoints.emplace_back(ep);
  }
  return options;
}

namespace etcd_internal {

class Client {
 public:
  struct Endpoint {
    std::string host;
    int port;
    std::string name;  // as given: "host:port"
  };

  explicit Client(const EtcdStoreOptions& options)
      : prefix_(absl::StrCat("/trident/", options.job, "/")),
        connect_timeout_(options.connect_timeout),
        idle_(options.endpoints.size()) {
    for (const std::string& ep : options.endpoints) {
      size_t colon = ep.rfind(':');
      std::string host = ep.substr(0, colon);
      if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
      }
      int port = 0;
      (void)absl::SimpleAtoi(ep.substr(colon + 1), &port);
      endpoints_.push_back({host, port, ep});
    }
  }

  const std::string& prefix() const { return prefix_; }
  std::string Full(absl::string_view key) const { return absl::StrCat(prefix_, key); }
  std::string preferred_name() const { return endpoints_[preferred_.load()].name; }
  std::string AllNames() const {
    return absl::StrJoin(endpoints_, ",", [](std::string* out, const Endpoint& e) {
      absl::StrAppend(out, e.name);
    });
  }

  // POSTs `body` to `path`, failing over across endpoints until the deadline. `retry_if_sent`:
  // whether a request that may have reached etcd (its answer lost) may be sent again.
  absl::StatusOr<json> Call(absl::string_view path, const json& body, absl::Time deadline,
                            bool retry_if_sent, absl::string_view what) {
    const std::string payload = body.dump();
    const size_t n = endpoints_.size();
    std::vector<std::string> errors(n);
    RetryBackoff backoff(kFirstBackoff, kMaxBackoff);
    const size_t start = preferred_.load();
    for (size_t attempt = 0;; ++attempt) {
      const size_t ep = (start + attempt) % n;
      absl::Time now = absl::Now();
      if (now >= deadline) break;
      // A request that must not be sent twice goes on a fresh connection: on a pooled one that
      // the server closed while idle, the failure would look like a lost answer.
      std::unique_ptr<httplib::Client> cli = Borrow(ep, /*fresh=*/!retry_if_sent);
      SetTimeouts(*cli, std::min(connect_timeout_, deadline - now), deadline - now);
      httplib::Result res = cli->Post(std::string(path), payload, "application/json");
      if (!res) {
        const httplib::Error err = res.error();
        errors[ep] = httplib::to_string(err);
        if (err != httplib::Error::Connection && !retry_if_sent) {
          return absl::UnavailableError(absl::StrCat(
              what, ": the connection to etcd at ", endpoints_[ep].name, " broke (", errors[ep],
              ") after the request was sent; its outcome is unknown, so it was not retried "
              "(it may or may not have been applied); check the key before retrying"));
        }
      } else if (res->status == 200) {
        json reply = json::parse(res->body, nullptr, /*allow_exceptions=*/false);
        if (reply.is_discarded() || !reply.is_object()) {
          return absl::InternalError(absl::StrCat(what, ": etcd at ", endpoints_[ep].name,
                                                  " answered something that is not JSON: '",
                                                  res->body.substr(0, 200), "'"));
        }
        Release(ep, std::move(cli));
        preferred_.store(ep);
        return reply;
      } else {
        Release(ep, std::move(cli));
        json err = json::parse(res->body, nullptr, false);
        int code = err.is_object() ? static_cast<int>(Int(err, "code")) : 0;
        std::string message = err.is_object() && err.contains("message") && err["message"].is_string()
                                  ? err["message"].get<std::string>()
                                  : res->body.substr(0, 200);
        errors[ep] = absl::StrCat("HTTP ", res->status, ": ", message);
        // gRPC UNAVAILABLE (no leader, leader changed, stopping, request timed out): another
        // member may serve it. "timed out" may have been applied, though.
        if (code != 14 && res->status != 503) {
          return MapError(code, message, endpoints_[ep].name, what);
        }
        if (absl::StrContains(message, "timed out") && !retry_if_sent) {
          return absl::UnavailableError(absl::StrCat(
              what, ": etcd at ", endpoints_[ep].name, " said '", message,
              "'; its outcome is unknown, so it was not retried; check the key before retrying"));
        }
      }
      if ((attempt + 1) % n == 0 && !backoff.Sleep(deadline)) break;
    }
    std::vector<std::string> tried;
    for (size_t i = 0; i < n; ++i) {
      tried.push_back(absl::StrCat(endpoints_[i].name, ": ",
                                   errors[i].empty() ? "not tried before the deadline" : errors[i]));
    }
    return absl::UnavailableError(absl::StrCat(
        what, ": no etcd endpoint answered before the deadline (", absl::StrJoin(tried, "; "),
        "); check that etcd runs at the URL's endpoints and is reachable from this host"));
  }

  // Watches [key, range_end) from start_revision on the preferred endpoint, handing each batch
  // of events to on_events until it returns false (then OK). kDeadlineExceeded at the deadline;
  // kUnavailable when the stream broke or etcd cancelled it (the caller reads again and
  // re-watches; the next endpoint is preferred then).
  absl::Status Watch(const std::string& key, const std::string& range_end, int64_t start_revision,
                     absl::Time deadline, const std::function<bool(const json&)>& on_events) {
    const size_t ep = preferred_.load();
    const Endpoint& e = endpoints_[ep];
    absl::Time now = absl::Now();
    if (now >= deadline) return absl::DeadlineExceededError("watch");
    httplib::Client cli(e.host, e.port);
    cli.set_tcp_nodelay(true);
    SetTimeouts(cli, std::min(connect_timeout_, deadline - now),
                deadline - now + absl::Seconds(1));
    json body = {{"create_request",
                  {{"key", B64(key)},
                   {"range_end", B64(range_end)},
                   {"start_revision", std::to_string(start_revision)}}}};
    httplib::Request req;
    req.method = "POST";
    req.path = "/v3/watch";
    req.body = body.dump();
    req.headers.emplace("Content-Type", "application/json");
    // A member that loses its leader cancels the watch instead of going silent.
    req.headers.emplace("Grpc-Metadata-hasleader", "true");
    std::string buffer;
    bool done = false;
    absl::Status stream_error;
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
      buffer.append(data, len);
      size_t nl;
      while ((nl = buffer.find('\n')) != std::string::npos) {
        std::string line = buffer.substr(0, nl);
        buffer.erase(0, nl + 1);
        if (absl::StripAsciiWhitespace(line).empty()) continue;
        json msg = json::parse(line, nullptr, false);
        if (msg.is_discarded() || !msg.is_object() || msg.contains("error") ||
            !msg.contains("result")) {
          stream_error = absl::UnavailableError(
              absl::StrCat("watch on etcd at ", e.name, " ended: ", line.substr(0, 300)));
          return false;
        }
        const json& result = msg["result"];
        if (result.value("canceled", false)) {
          stream_error = absl::UnavailableError(absl::StrCat(
              "watch on etcd at ", e.name, " was cancelled: ", result.dump().substr(0, 300)));
          return false;
        }
        auto events = result.find("events");
        if (events != result.end() && events->is_array() && !on_events(*events)) {
          done = true;
          return false;
        }
      }
      return true;
    };
    absl::Notification finished;
    std::thread watchdog([&] {
      if (!finished.WaitForNotificationWithDeadline(deadline)) cli.stop();
    });
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    bool ok = cli.send(req, res, err);
    finished.Notify();
    watchdog.join();
    if (done) return absl::OkStatus();
    if (absl::Now() >= deadline && stream_error.ok()) return absl::DeadlineExceededError("watch");
    // Prefer the next endpoint, unless another call already moved on.
    size_t expected = ep;
    preferred_.compare_exchange_strong(expected, (ep + 1) % endpoints_.size());
    if (!stream_error.ok()) return stream_error;
    return absl::UnavailableError(absl::StrCat(
        "watch on etcd at ", e.name, " ended: ",
        ok ? absl::StrCat("HTTP ", res.status, " ", res.body.substr(0, 200))
           : httplib::to_string(err)));
  }

 private:
  static absl::Status MapError(int code, const std::string& message, const std::string& ep,
                               absl::string_view what) {
    std::string text = absl::StrCat(what, ": etcd at ", ep, " refused: ", message);
    switch (code) {
      case 3:  // INVALID_ARGUMENT
        if (absl::StrContains(message, "too large")) {
          return absl::InvalidArgumentError(absl::StrCat(
              text, " (the request is over etcd's --max-request-bytes, 1.5 MiB by default; "
                    "start etcd with a larger --max-request-bytes or store smaller values)"));
        }
        return absl::InvalidArgumentError(text);
      case 5:
        return absl::NotFoundError(text);
      case 7:
      case 16:
        return absl::PermissionDeniedError(absl::StrCat(
            text, " (this etcd requires authentication, which the etcd store does not do yet)"));
      case 8:
        return absl::ResourceExhaustedError(
            absl::StrCat(text, " (etcd is out of space or over its quota; compact and defrag it)"));
      case 9:
        return absl::FailedPreconditionError(text);
      default:
        return absl::InternalError(text);
    }
  }

  std::unique_ptr<httplib::Client> Borrow(size_t ep, bool fresh) {
    if (!fresh) {
      absl::MutexLock lock(&mu_);
      if (!idle_[ep].empty()) {
        std::unique_ptr<httplib::Client> cli = std::move(idle_[ep].back());
        idle_[ep].pop_back();
        return cli;
      }
    }
    auto cli = std::make_unique<httplib::Client>(endpoints_[ep].host, endpoints_[ep].port);
    cli->set_keep_alive(true);
    // Headers and body go out in separate writes: without TCP_NODELAY, Nagle and the peer's
    // delayed ACK add about 40 ms to every request.
    cli->set_tcp_nodelay(true);
    return cli;
  }

  void Release(size_t ep, std::unique_ptr<httplib::Client> cli) {
    absl::MutexLock lock(&mu_);
    if (idle_[ep].size() < kMaxIdlePerEndpoint) idle_[ep].push_back(std::move(cli));
  }

  const std::string prefix_;
  const absl::Duration connect_timeout_;
  std::vector<Endpoint> endpoints_;
  std::atomic<size_t> preferred_{0};
  absl::Mutex mu_;
  std::vector<std::vector<std::unique_ptr<httplib::Client>>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace etcd_internal

namespace {

struct KeyRead {
  bool found = false;
  std::string value;
  int64_t mod_revision = 0;  // 0 when absent
  int64_t revision = 0;      // the store's revision at the read
};

KeyRead ParseRange(const json& range, int64_t revision);

absl::StatusOr<KeyRead> ReadKey(etcd_internal::Client& client, absl::string_view key,
                                absl::Time deadline, absl::string_view what) {
  ASSIGN_OR_RETURN(json reply, client.Call("/v3/kv/range", {{"key", B64(client.Full(key))}},
                                           deadline, /*retry_if_sent=*/true, what));
  return ParseRange(reply, Int(reply.value("header", json::object()), "revision"));
}

KeyRead ParseRange(const json& range, int64_t revision) {
  KeyRead read;
  read.revision = revision;
  auto kvs = range.find("kvs");
  if (kvs != range.end() && kvs->is_array() && !kvs->empty()) {
    read.found = true;
    read.value = UnB64((*kvs)[0], "value");
    read.mod_revision = Int((*kvs)[0], "mod_revision");
  }
  return read;
}

// Commits desired at key iff the key's mod_revision is still `read->mod_revision` (0: still
// absent). Returns whether it committed; when not, *read is the key as it is now (the
// transaction's failure branch reads it, saving a round trip under contention).
absl::StatusOr<bool> PutIfUnchanged(etcd_internal::Client& client, absl::string_view key,
                                    KeyRead* read, absl::string_view desired, absl::Time deadline,
                                    bool retry_if_sent, absl::string_view what) {
  const std::string k = B64(client.Full(key));
  json txn = {
      {"compare",
       json::array({{{"target", "MOD"},
                     {"key", k},
                     {"mod_revision", std::to_string(read->mod_revision)},
                     {"result", "EQUAL"}}})},
      {"success", json::array({{{"request_put", {{"key", k}, {"value", B64(desired)}}}}})},
      {"failure", json::array({{{"request_range", {{"key", k}}}}})}};
  ASSIGN_OR_RETURN(json reply, client.Call("/v3/kv/txn", txn, deadline, retry_if_sent, what));
  if (reply.value("succeeded", false)) return true;
  const json& responses = reply.value("responses", json::array());
  *read = ParseRange(responses.empty() ? json::object()
                                       : responses[0].value("response_range", json::object()),
                     Int(reply.value("header", json::object()), "revision"));
  return false;
}

std::string Quoted(absl::string_view key) { return store_internal::QuoteKey(key); }

absl::Status WaitForKeys(etcd_internal::Client& client, std::vector<std::string> missing,
                         absl::Time deadline, const char* op);

}  // namespace

EtcdStore::EtcdStore(std::shared_ptr<etcd_internal::Client> client) : client_(std::move(client)) {}
EtcdStore::~EtcdStore() = default;

std::string EtcdStore::preferred_endpoint() const { return client_->preferred_name(); }

absl::Status EtcdStore::Set(absl::string_view key, absl::string_view value, absl::Time deadline) {
  RETURN_IF_ERROR(ValidateKey(key));
  RETURN_IF_ERROR(ValidateValue(value));
  return client_
      ->Call("/v3/kv/put", {{"key", B64(client_->Full(key))}, {"value", B64(value)}}, deadline,
             true, absl::StrCat("Set ", Quoted(key)))
      .status();
}

absl::StatusOr<std::string> EtcdStore::TryGet(absl::string_view key, absl::Time deadline) {
  RETURN_IF_ERROR(ValidateKey(key));
  ASSIGN_OR_RETURN(KeyRead read, ReadKey(*client_, key, deadline, "TryGet"));
  if (!read.found) {
    return absl::NotFoundError(absl::StrCat("store key ", Quoted(key), " is not set"));
  }
  return read.value;
}

absl::StatusOr<std::string> EtcdStore::Get(absl::string_view key, absl::Time deadline) {
  RETURN_IF_ERROR(ValidateKey(key));
  while (true) {
    // A grace past the deadline lets a Get that times out still read once.
    ASSIGN_OR_RETURN(KeyRead read, ReadKey(*client_, key, std::max(deadline, absl::Now() +
                                                              absl::Milliseconds(200)),
                                           "Get"));
    if (read.found) return read.value;
    RETURN_IF_ERROR(WaitForKeys(*client_, {std::string(key)}, deadline, "Get"));
    // Put and deleted again before the read: wait again.
  }
}

absl::StatusOr<int64_t> EtcdStore::Add(absl::string_view key, int64_t delta, absl::Time deadline) {
  RETURN_IF_ERROR(ValidateKey(key));
  const std::string what = absl::StrCat("Add to ", Quoted(key));
  ASSIGN_OR_RETURN(KeyRead read, ReadKey(*client_, key, deadline, what));
  while (true) {
    ASSIGN_OR_RETURN(int64_t sum, store_internal::AddToCounter(
                                      key, read.found ? &read.value : nullptr, delta));
    ASSIGN_OR_RETURN(bool committed, PutIfUnchanged(*client_, key, &read, std::to_string(sum),
                                                    deadline, /*retry_if_sent=*/false, what));
    if (committed) return sum;
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat(
          what, ": other clients changed the key on every try until the deadline; retry later"));
    }
  }
}

absl::StatusOr<std::string> EtcdStore::CompareSet(absl::string_view key, absl::string_view expected,
                                                  absl::string_view desired,
                                                  absl::Time deadline) {
  RETURN_IF_ERROR(ValidateKey(key));
  RETURN_IF_ERROR(ValidateValue(desired));
  const std::string what = absl::StrCat("CompareSet ", Quoted(key));
  ASSIGN_OR_RETURN(KeyRead read, ReadKey(*client_, key, deadline, what));
  while (true) {
    if (read.value != expected) return read.value;  // absent reads as ""
    // A retried transaction that had committed reads back `desired` next time round, which is
    // the right answer, so this one may be retried.
    ASSIGN_OR_RETURN(bool committed, PutIfUnchanged(*client_, key, &read, desired, deadline,
                                                    /*retry_if_sent=*/true, what));
    if (committed) return std::string(desired);
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat(
          what, ": other clients changed the key on every try until the deadline; retry later"));
    }
  }
}

absl::Status EtcdStore::Wait(absl::Span<const std::string> keys, absl::Time deadline) {
  RETURN_IF_ERROR(store_internal::ValidateKeys(keys));
  return WaitForKeys(*client_, std::vector<std::string>(keys.begin(), keys.end()), deadline,
                     "Wait");
}

namespace {

// Waits until every key of `missing` exists: reads them, then watches from the read's
// revision until one is put, and reads again. kDeadlineExceeded names those still missing.
absl::Status WaitForKeys(etcd_internal::Client& client, std::vector<std::string> missing,
                         absl::Time deadline, const char* op) {
  RetryBackoff backoff(kFirstBackoff, kMaxBackoff);
  while (true) {
    // Read every missing key, in transactions of range requests.
    std::vector<std::string> still;
    int64_t revision = -1;
    for (size_t i = 0; i < missing.size(); i += kRangesPerTxn) {
      json ops = json::array();
      size_t end = std::min(missing.size(), i + kRangesPerTxn);
      for (size_t j = i; j < end; ++j) {
        ops.push_back({{"request_range", {{"key", B64(client.Full(missing[j])), },
                                          {"keys_only", true}}}});
      }
      absl::StatusOr<json> reply = client.Call("/v3/kv/txn", {{"success", ops}},
                                                 std::max(deadline, absl::Now() + absl::Milliseconds(200)),
                                                 true, op);
      if (!reply.ok()) {
        if (absl::Now() >= deadline) return store_internal::MissingKeysError(op, missing);
        return reply.status();
      }
      int64_t rev = Int(reply->value("header", json::object()), "revision");
      revision = revision < 0 ? rev : std::min(revision, rev);
      const json& responses = reply->value("responses", json::array());
      for (size_t j = i; j < end; ++j) {
        const json& r = j - i < responses.size() ? responses[j - i] : json::object();
        const json& range = r.value("response_range", json::object());
        if (Int(range, "count") == 0) still.push_back(missing[j]);
      }
    }
    missing = std::move(still);
    if (missing.empty()) return absl::OkStatus();
    if (absl::Now() >= deadline) return store_internal::MissingKeysError(op, missing);

    // Watch the span of the missing keys from just after the read, until one of them is put.
    std::set<std::string> wanted;
    for (const std::string& key : missing) wanted.insert(client.Full(key));
    const std::string first = *wanted.begin();
    const std::string last_end = *wanted.rbegin() + std::string(1, '\0');
    absl::Status watched = client.Watch(first, last_end, revision + 1, deadline,
                                          [&](const json& events) {
                                            for (const json& ev : events) {
                                              if (ev.value("type", "PUT") != "PUT") continue;
                                              std::string k = UnB64(ev.value("kv", json::object()), "key");
                                              if (wanted.count(k)) return false;  // read again
                                            }
                                            return true;
                                          });
    if (absl::IsDeadlineExceeded(watched)) {
      return store_internal::MissingKeysError(op, missing);
    }
    if (!watched.ok()) {
      TLOG(debug, "etcd store: {}; reading again", watched.message());
      if (!backoff.Sleep(deadline)) return store_internal::MissingKeysError(op, missing);
    }
  }
}

}  // namespace

absl::StatusOr<bool> EtcdStore::Delete(absl::string_view key, absl::Time deadline) {
  RETURN_IF_ERROR(ValidateKey(key));
  ASSIGN_OR_RETURN(json reply, client_->Call("/v3/kv/deleterange",
                                             {{"key", B64(client_->Full(key))}}, deadline, true,
                                             absl::StrCat("Delete ", Quoted(key))));
  return Int(reply, "deleted") > 0;
}

absl::StatusOr<std::vector<std::string>> EtcdStore::ListPrefix(absl::string_view prefix,
                                                               absl::Time deadline) {
  RETURN_IF_ERROR(store_internal::ValidatePrefix(prefix));
  const std::string full = client_->Full(prefix);
  ASSIGN_OR_RETURN(json reply,
                   client_->Call("/v3/kv/range",
                                 {{"key", B64(full)},
                                  {"range_end", B64(PrefixEnd(full))},
                                  {"keys_only", true}},
                                 deadline, true, "ListPrefix"));
  std::vector<std::string> keys;
  auto kvs = reply.find("kvs");
  if (kvs != reply.end() && kvs->is_array()) {
    for (const json& kv : *kvs) {
      std::string key = UnB64(kv, "key");
      if (absl::StartsWith(key, client_->prefix())) keys.push_back(key.substr(client_->prefix().size()));
    }
  }
  std::sort(keys.begin(), keys.end());  // etcd sorts by bytes already; std::string does the same
  return keys;
}

// ---------------------------------------------------------------------------------------------
// Leases.

struct EtcdLease::State {
  absl::Mutex mu;
  bool stop ABSL_GUARDED_BY(mu) = false;
  bool abandoned ABSL_GUARDED_BY(mu) = false;
  absl::Status status ABSL_GUARDED_BY(mu);
  std::thread thread;
};

EtcdLease::EtcdLease(std::shared_ptr<etcd_internal::Client> client, int64_t id, absl::Duration ttl)
    : client_(std::move(client)), id_(id), ttl_(ttl), state_(std::make_shared<State>()) {
  state_->thread = std::thread([this] { Run(); });
}

EtcdLease::~EtcdLease() {
  bool revoke;
  {
    absl::MutexLock lock(&state_->mu);
    revoke = !state_->abandoned && state_->status.ok();
    state_->stop = true;
  }
  if (state_->thread.joinable()) state_->thread.join();
  if (revoke) {
    absl::Status s = client_
                         ->Call("/v3/lease/revoke", {{"ID", std::to_string(id_)}},
                                DeadlineIn(absl::Seconds(1)), true, "revoking a lease")
                         .status();
    if (!s.ok()) {
      TLOG(warn, "etcd store: lease {} not revoked ({}); it expires in {}", id_,
                  s.message(), absl::FormatDuration(ttl_));
    }
  }
}

bool EtcdLease::lost() const { return !status().ok(); }

absl::Status EtcdLease::status() const {
  absl::MutexLock lock(&state_->mu);
  return state_->status;
}

void EtcdLease::Abandon() {
  {
    absl::MutexLock lock(&state_->mu);
    state_->abandoned = true;
    state_->stop = true;
  }
  if (state_->thread.joinable() && state_->thread.get_id() != std::this_thread::get_id()) {
    state_->thread.join();
  }
}

void EtcdLease::Run() {
  absl::Time expiry = absl::Now() + ttl_;
  const absl::Duration period = ttl_ / 3;
  absl::Time next = absl::Now() + period;
  while (true) {
    {
      absl::MutexLock lock(&state_->mu);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) { return state_->stop; };
      state_->mu.AwaitWithDeadline(absl::Condition(&stopping), next);
      if (state_->stop) return;
    }
    absl::Time sent = absl::Now();
    absl::StatusOr<json> reply =
        client_->Call("/v3/lease/keepalive", {{"ID", std::to_string(id_)}},
                      std::min(sent + period, std::max(expiry, sent + absl::Milliseconds(100))),
                      true, "renewing a lease");
    absl::Status lost;
    if (reply.ok()) {
      int64_t ttl = Int(reply->value("result", json::object()), "TTL");
      if (ttl <= 0) {
        lost = absl::UnavailableError(absl::StrCat(
            "etcd lease ", id_, " is gone (expired or revoked) on the etcd cluster at ",
            client_->AllNames(), "; its keys are deleted; this agent must register again"));
      } else {
        expiry = sent + absl::Seconds(ttl);
        next = absl::Now() + period;
        continue;
      }
    } else if (absl::Now() >= expiry) {
      lost = absl::UnavailableError(absl::StrCat(
          "etcd lease ", id_, " expired: no renewal got through within its ttl of ",
          absl::FormatDuration(ttl_), " (last error: ", reply.status().message(),
          "); its keys are deleted; this agent must stop or register again"));
    } else {
      next = absl::Now() + std::min(period, absl::Milliseconds(200));
      continue;
    }
    TLOG(warn, "etcd store: {}", lost.message());
    absl::MutexLock lock(&state_->mu);
    state_->status = lost;
    return;
  }
}

absl::StatusOr<std::unique_ptr<EtcdLease>> EtcdStore::GrantLease(absl::Duration ttl,
                                                                 absl::Time deadline) {
  int64_t seconds = absl::ToInt64Seconds(absl::Ceil(ttl, absl::Seconds(1)));
  if (ttl < absl::Seconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "etcd lease ttl ", absl::FormatDuration(ttl), " is under etcd's unit of one second"));
  }
  ASSIGN_OR_RETURN(json reply, client_->Call("/v3/lease/grant", {{"TTL", seconds}}, deadline,
                                             /*retry_if_sent=*/true, "granting a lease"));
  int64_t id = Int(reply, "ID");
  if (id == 0) {
    return absl::InternalError(absl::StrCat("etcd at ", client_->preferred_name(),
                                            " granted a lease without an ID: ", reply.dump()));
  }
  return std::unique_ptr<EtcdLease>(new EtcdLease(client_, id, absl::Seconds(seconds)));
}

absl::Status EtcdStore::PutWithLease(absl::string_view key, absl::string_view value,
                                     const EtcdLease& lease, absl::Time deadline) {
  RETURN_IF_ERROR(ValidateKey(key));
  RETURN_IF_ERROR(ValidateValue(value));
  return client_
      ->Call("/v3/kv/put",
             {{"key", B64(client_->Full(key))},
              {"value", B64(value)},
              {"lease", std::to_string(lease.id())}},
             deadline, true, absl::StrCat("Set ", Quoted(key), " with lease ", lease.id()))
      .status();
}

absl::StatusOr<std::unique_ptr<EtcdLease>> EtcdStore::SetWhileAlive(absl::string_view key,
                                                                    absl::string_view value,
                                                                    absl::Duration ttl,
                                                                    absl::Time deadline) {
  ASSIGN_OR_RETURN(std::unique_ptr<EtcdLease> lease, GrantLease(ttl, deadline));
  RETURN_IF_ERROR(PutWithLease(key, value, *lease, deadline));
  return lease;
}

absl::StatusOr<std::unique_ptr<EtcdStore>> NewEtcdStore(EtcdStoreOptions options,
                                                        absl::Time deadline) {
  if (options.endpoints.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("etcd store with no endpoints; expected ",
                                                   kUrlForm));
  }
  if (options.job.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("etcd store with no job; expected ", kUrlForm));
  }
  auto client = std::make_shared<etcd_internal::Client>(options);
  ASSIGN_OR_RETURN(json reply, client->Call("/v3/kv/range", {{"key", B64(client->prefix())}},
                                            deadline, true, "connecting to the etcd store"));
  (void)reply;
  return std::unique_ptr<EtcdStore>(new EtcdStore(std::move(client)));
}

}  // namespace trident
