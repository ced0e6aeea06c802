// FabricTransport over one libfabric RDM endpoint. See fabric_transport.h for the contract.
//
// Protocol. A message of B bytes with tag T is a head part of min(B, H) bytes sent with
// fi_tsenddata, whose remote CQ data is B, followed by the rest in parts of at most P bytes
// (fi_tsend), all with tag T; H is 4 KiB and P is min(max_msg_size, 16 MiB) (both smaller
// when FabricOptions::max_part_bytes says so). The receiver posts an H-byte receive for the
// head (into a bounce buffer when the caller's buffer is smaller), learns B from it, and then
// posts the rest with exact sizes. So libfabric never truncates: in 1.17 shm spins forever
// in smr_cma_loop on a receive smaller than a CMA message, and tcp;ofi_rxm loses the stream
// after a truncated rendezvous message. A message larger than the caller's buffer is received
// into scratch memory and fails the receive with kInvalidArgument, and the next message on
// the stream arrives intact. Because the parts of a message share its tag, one receive per
// (peer, tag) stream is posted at a time; later ones wait in the Stream's queue until the
// head receive has finished.
//
// Requests and parts. Each request owns an Op; each libfabric operation it issues is a Part,
// whose first member is the fi_context2 that libfabric gets as the operation context, so a
// completion leads back to its Part and Op. The request is done when its last part is back,
// or earlier when it failed or was cancelled and no part still points into the caller's
// buffer; the Op then lives on, without its request, until libfabric returns every part
// (draining the rest of a message into scratch memory keeps the stream in step).
//
// Posting never blocks. A post that libfabric refuses with -FI_EAGAIN (queue full) is kept in
// a FIFO backlog (one for sends, one for receives, so that a full send queue never delays a
// receive) and retried by Progress(); later posts queue behind it, which keeps the order of
// same-(peer, tag) messages. Blocking in a post would deadlock two ranks that both send large
// messages before posting their receives.
//
// Memory registration. When the domain has FI_MR_LOCAL (efa), each part's buffer is
// registered (fi_mr_reg, bound to the endpoint under FI_MR_ENDPOINT, with our own keys unless
// FI_MR_PROV_KEY) right before it is posted and closed when it completes.
#include "transport/fabric/fabric_transport.h"

#include <dirent.h>
#include <dlfcn.h>
#include <signal.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_tagged.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/backoff.h"
#include "common/check.h"
#include "common/host_memory.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace trident {
namespace {

// The API version we ask for: 1.17 (Debian 12), or the header's if that is older.
constexpr uint32_t kFiVersion = FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION) < FI_VERSION(1, 17)
                                    ? FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION)
                                    : FI_VERSION(1, 17);
constexpr int kCqBatch = 16;
// Reading the CQ stops after this many batches, so that Progress() never runs for long.
constexpr int kMaxCqBatchesPerProgress = 64;
constexpr size_t kHeadBytes = 4096;
// Bounds the scratch memory that swallows an oversized message.
constexpr size_t kDefaultMaxPart = size_t{16} << 20;
constexpr size_t kBouncePoolSize = 64;

// libfabric returns negative codes; fi_strerror takes the positive one.
std::string FiText(int64_t rc) {
  return absl::StrCat(fi_strerror(static_cast<int>(rc < 0 ? -rc : rc)), " (", rc, ")");
}

absl::Status FiStatus(absl::StatusCode code, absl::string_view call, int64_t rc) {
  return absl::Status(code, absl::StrCat(call, " failed: ", FiText(rc)));
}

// "tcp" names the RDM stack over the tcp core provider; same for verbs.
std::string ResolveProvider(const std::string& name) {
  if (name.empty()) return "shm";
  if (name == "tcp") return "tcp;ofi_rxm";
  if (name == "verbs") return "verbs;ofi_rxm";
  return name;
}

std::string CoreProvider(const std::string& name) { return name.substr(0, name.find(';')); }

// IP providers, whose domains are network interfaces.
bool IsIpProvider(const std::string& name) {
  std::string core = CoreProvider(name);
  return core == "tcp" || core == "net";
}

// The signals libinfinipath takes over from a load-time constructor (see QuietUnusedProviders).
constexpr int kForeignSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGABRT, SIGINT, SIGTERM, SIGFPE};

// Whether a signal's handler is code of a shared library whose file name contains `library`.
bool HandlerIsIn(int sig, absl::string_view library) {
  struct sigaction current {};
  if (sigaction(sig, nullptr, &current) != 0) return false;
  void* handler = (current.sa_flags & SA_SIGINFO) != 0
                      ? reinterpret_cast<void*>(current.sa_sigaction)
                      : reinterpret_cast<void*>(current.sa_handler);
  if (handler == reinterpret_cast<void*>(SIG_DFL) || handler == reinterpret_cast<void*>(SIG_IGN)) {
    return false;
  }
  Dl_info info{};
  return dladdr(handler, &info) != 0 && info.dli_fname != nullptr &&
         absl::StrContains(info.dli_fname, library);
}

// Restores the default action of each of kForeignSignals whose handler lives in
// libinfinipath; returns how many. No logging: it also runs while the program loads.
int RestoreInfinipathHandlers() {
  int restored = 0;
  for (int sig : kForeignSignals) {
    if (!HandlerIsIn(sig, "libinfinipath")) continue;
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    if (sigaction(sig, &dfl, nullptr) == 0) ++restored;
  }
  return restored;
}

// At load, after libinfinipath's constructor (a dependency's constructors run first): a
// process that links this file but never opens an endpoint (libtrident.so holds every layer)
// must not keep those handlers either.
[[maybe_unused]] const int kRestoredAtLoad = RestoreInfinipathHandlers();

// libfabric reads FI_TCP_IFACE when it first initialises its providers; setting it early keeps
// the tcp provider off every interface but the chosen one even where our domain hint is not
// honoured. It does not override a value the user set.
void SetTcpIfaceOnce(const std::string& iface) {
  static std::once_flag once;
  std::call_once(once, [&] { setenv("FI_TCP_IFACE", iface.c_str(), /*overwrite=*/0); });
}

struct InfoDeleter {
  void operator()(fi_info* info) const { fi_freeinfo(info); }
};
using InfoPtr = std::unique_ptr<fi_info, InfoDeleter>;

struct FidDeleter {
  template <typename T>
  void operator()(T* object) const {
    int rc = fi_close(&object->fid);
    if (rc != 0) TLOG(warn, "fabric: fi_close failed: {}", FiText(rc));
  }
};
template <typename T>
using FidPtr = std::unique_ptr<T, FidDeleter>;

template <typename T>
void CloseFid(FidPtr<T>& object, absl::string_view what) {
  if (object == nullptr) return;
  int rc = fi_close(&object.release()->fid);
  // After a peer failed, tcp;ofi_rxm 1.17 keeps the broken connection's endpoint, so its
  // domain and fabric stay busy; that leak is libfabric's and harmless, so only debug it.
  if (rc == -FI_EBUSY) {
    TLOG(debug, "fabric: closing the {} failed: {}", what, FiText(rc));
  } else if (rc != 0) {
    TLOG(warn, "fabric: closing the {} failed: {}", what, FiText(rc));
  }
}

absl::Status ProviderError(const std::string& provider, int rc, absl::string_view wanted) {
  std::vector<std::string> offered = ListFabricProviders();
  std::string list = offered.empty() ? "(none)" : absl::StrJoin(offered, ", ");
  bool known = std::find(offered.begin(), offered.end(), provider) != offered.end() ||
               std::find(offered.begin(), offered.end(), CoreProvider(provider)) != offered.end();
  if (!known) {
    return absl::InvalidArgumentError(absl::StrCat(
        "libfabric provider '", provider, "' is not available on this machine (fi_getinfo: ",
        FiText(rc), "); fi_getinfo offers: ", list,
        ". Set TRIDENT_FABRIC_PROVIDER to one of them (e.g. shm or tcp)"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("libfabric provider '", provider, "' offers no endpoint that Trident can use (",
                   wanted, "): fi_getinfo: ", FiText(rc), "; fi_getinfo offers: ", list,
                   ". Set TRIDENT_FABRIC_PROVIDER to another provider"));
}

// What Describe() says and CheckFabricEndpoint compares.
std::string EndpointKind(const std::string& provider, const std::string& iface) {
  return iface.empty() ? provider : absl::StrCat(provider, " on ", iface);
}

}  // namespace

// --- opening -------------------------------------------------------------------------------

// The libfabric objects of an endpoint, until a FabricTransport takes them over.
struct FabricEndpoint::Impl {
  ~Impl() {
    CloseFid(ep, "endpoint");
    CloseFid(av, "address vector");
    CloseFid(cq, "completion queue");
    CloseFid(domain, "domain");
    CloseFid(fabric, "fabric");
  }

  absl::Status Open(const std::string& requested, const std::string& requested_iface,
                    size_t av_size_hint);

  std::string provider;   // as requested, resolved: "shm", "tcp;ofi_rxm", ...
  std::string iface;      // IP providers only
  std::string prov_name;  // as fi_getinfo names it
  std::string address;    // fi_getname: what peers insert into their address vectors
  InfoPtr info;
  FidPtr<fid_fabric> fabric;
  FidPtr<fid_domain> domain;
  FidPtr<fid_cq> cq;
  FidPtr<fid_av> av;
  FidPtr<fid_ep> ep;
};

absl::Status FabricEndpoint::Impl::Open(const std::string& requested,
                                        const std::string& requested_iface, size_t av_size_hint) {
  provider = ResolveProvider(requested);
  const bool ip = IsIpProvider(provider);
  if (ip) {
    iface = requested_iface.empty() ? "lo" : requested_iface;
    SetTcpIfaceOnce(iface);
  }

  InfoPtr hints(fi_allocinfo());
  TRIDENT_CHECK(hints != nullptr) << "fi_allocinfo returned null";
  hints->caps = FI_TAGGED | FI_DIRECTED_RECV;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->ep_attr->type = FI_EP_RDM;
  hints->tx_attr->msg_order = FI_ORDER_SAS;
  hints->rx_attr->msg_order = FI_ORDER_SAS;
  hints->domain_attr->threading = FI_THREAD_DOMAIN;
  hints->domain_attr->av_type = FI_AV_TABLE;
  hints->domain_attr->resource_mgmt = FI_RM_ENABLED;
  hints->domain_attr->mr_mode =
      FI_MR_LOCAL | FI_MR_ENDPOINT | FI_MR_PROV_KEY | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED;
  hints->fabric_attr->prov_name = strdup(provider.c_str());
  const char* node = nullptr;
  uint64_t flags = 0;
  std::string wanted = "FI_EP_RDM, FI_TAGGED, FI_DIRECTED_RECV, FI_ORDER_SAS, FI_AV_TABLE";
  if (ip) {
    hints->domain_attr->name = strdup(iface.c_str());
    absl::StrAppend(&wanted, ", domain ", iface);
    if (iface == "lo") {
      // Bind to loopback explicitly: no traffic may leave the machine.
      node = "127.0.0.1";
      flags = FI_SOURCE;
      hints->addr_format = FI_SOCKADDR_IN;
    }
  }

  fi_info* raw = nullptr;
  int rc = fi_getinfo(kFiVersion, node, nullptr, flags, hints.get(), &raw);
  if (rc != 0 || raw == nullptr) return ProviderError(provider, rc, wanted);
  info.reset(raw);
  prov_name = info->fabric_attr->prov_name ? info->fabric_attr->prov_name : provider;
  if (info->ep_attr->max_msg_size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("libfabric provider ", prov_name, " reports max_msg_size 0"));
  }
  const size_t cq_data_size = info->domain_attr->cq_data_size;
  if (cq_data_size < 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "libfabric provider ", prov_name, " carries ", cq_data_size,
        " bytes of remote CQ data; Trident needs at least 4. Set TRIDENT_FABRIC_PROVIDER to "
        "another provider"));
  }
  TLOG(debug, 
      "fabric: opening an endpoint: provider {} fabric {} domain {} max_msg_size {} inject {} "
      "mr_mode {:#x}",
      prov_name, info->fabric_attr->name ? info->fabric_attr->name : "?",
      info->domain_attr->name ? info->domain_attr->name : "?", info->ep_attr->max_msg_size,
      info->tx_attr->inject_size, info->domain_attr->mr_mode);

  fid_fabric* raw_fabric = nullptr;
  rc = fi_fabric(info->fabric_attr, &raw_fabric, nullptr);
  if (rc != 0) return FiStatus(absl::StatusCode::kUnavailable, "fi_fabric", rc);
  fabric.reset(raw_fabric);

  fid_domain* raw_domain = nullptr;
  rc = fi_domain(fabric.get(), info.get(), &raw_domain, nullptr);
  if (rc != 0) return FiStatus(absl::StatusCode::kUnavailable, "fi_domain", rc);
  domain.reset(raw_domain);

  fi_cq_attr cq_attr{};
  cq_attr.format = FI_CQ_FORMAT_TAGGED;
  cq_attr.wait_obj = FI_WAIT_NONE;
  cq_attr.size = info->tx_attr->size + info->rx_attr->size;
  fid_cq* raw_cq = nullptr;
  rc = fi_cq_open(domain.get(), &cq_attr, &raw_cq, nullptr);
  if (rc != 0) return FiStatus(absl::StatusCode::kUnavailable, "fi_cq_open", rc);
  cq.reset(raw_cq);

  // The count is a hint (fi_av(3)); 0 lets the provider choose.
  fi_av_attr av_attr{};
  av_attr.type = FI_AV_TABLE;
  av_attr.count = av_size_hint;
  fid_av* raw_av = nullptr;
  rc = fi_av_open(domain.get(), &av_attr, &raw_av, nullptr);
  if (rc != 0) return FiStatus(absl::StatusCode::kUnavailable, "fi_av_open", rc);
  av.reset(raw_av);

  fid_ep* raw_ep = nullptr;
  rc = fi_endpoint(domain.get(), info.get(), &raw_ep, nullptr);
  if (rc != 0) return FiStatus(absl::StatusCode::kUnavailable, "fi_endpoint", rc);
  ep.reset(raw_ep);
  rc = fi_ep_bind(ep.get(), &cq->fid, FI_TRANSMIT | FI_RECV);
  if (rc != 0) return FiStatus(absl::StatusCode::kUnavailable, "fi_ep_bind(cq)", rc);
  rc = fi_ep_bind(ep.get(), &av->fid, 0);
  if (rc != 0) return FiStatus(absl::StatusCode::kUnavailable, "fi_ep_bind(av)", rc);
  rc = fi_enable(ep.get());
  if (rc != 0) return FiStatus(absl::StatusCode::kUnavailable, "fi_enable", rc);

  size_t name_len = 0;
  rc = fi_getname(&ep->fid, nullptr, &name_len);
  if (rc != -FI_ETOOSMALL && rc != 0) {
    return FiStatus(absl::StatusCode::kUnavailable, "fi_getname", rc);
  }
  address.assign(name_len, '\0');
  rc = fi_getname(&ep->fid, address.data(), &name_len);
  if (rc != 0) return FiStatus(absl::StatusCode::kUnavailable, "fi_getname", rc);
  address.resize(name_len);
  return absl::OkStatus();
}

FabricEndpoint::FabricEndpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  TRIDENT_CHECK(impl_ != nullptr) << "FabricEndpoint without an implementation";
}

FabricEndpoint::~FabricEndpoint() = default;

std::string FabricEndpoint::Describe() const {
  return EndpointKind(impl_->provider, impl_->iface);
}

namespace {

struct Op;

enum class PartState { kIdle, kQueued, kPosted };

// One libfabric operation. `ctx` must stay first: its address is the operation context.
struct Part {
  fi_context2 ctx;
  Op* op = nullptr;
  char* buf = nullptr;
  size_t len = 0;  // bytes posted
  fid_mr* mr = nullptr;
  PartState state = PartState::kIdle;
  bool head = false;  // the first part of a message (carries its size)
  // The buffer is the caller's (or, for a receive's head, a bounce buffer copied into the
  // caller's): the request cannot complete early while such a part is out.
  bool user = false;
  bool needs_drain = false;  // a receive part cancelled unmatched: to be re-posted to scratch
};
static_assert(offsetof(Part, ctx) == 0);

enum class OpKind { kSend, kRecv };

struct Op {
  OpKind kind = OpKind::kSend;
  TransportRequest* request = nullptr;  // null once the request completed
  int peer = -1;
  uint64_t tag = 0;
  char* data = nullptr;
  size_t size = 0;  // bytes to send, or receive capacity
  // Parts never move once created: the head inline, the rest in one array allocated when
  // their number is known (at PostSend; at the head's arrival for a receive).
  Part head;
  std::unique_ptr<Part[]> rest;
  size_t num_rest = 0;
  int outstanding = 0;             // parts queued or posted
  int user_outstanding = 0;        // of those, parts with Part::user
  size_t bytes = 0;                // bytes delivered
  std::unique_ptr<char[]> bounce;  // receive: the head's buffer when capacity < head size
  HostMemory scratch;              // receive: where parts that must not reach the caller go
  size_t scratch_size = 0;
  absl::Status status;  // first error
  bool cancelled = false;
  absl::Status cancel_reason;
  bool cut = false;          // cancelled before all of the message reached the caller's buffer
  bool drained = false;      // some of the message went to scratch
  bool stream_head = false;  // receive: the one posted on its (peer, tag) stream
  bool waiting = false;      // receive: queued behind the stream's head, not posted
};

template <typename F>
void ForEachPart(Op* op, F f) {
  f(op->head);
  for (size_t i = 0; i < op->num_rest; ++i) f(op->rest[i]);
}

void InitPart(Part& part, Op* op, char* buf, size_t len, bool user) {
  std::memset(&part.ctx, 0, sizeof(part.ctx));
  part.op = op;
  part.buf = buf;
  part.len = len;
  part.user = user;
}

absl::string_view KindName(OpKind kind) { return kind == OpKind::kSend ? "send" : "receive"; }

bool IsPeerGone(int err) {
  switch (err) {
    case FI_ECONNREFUSED:
    case FI_ECONNRESET:
    case FI_ECONNABORTED:
    case FI_ENOTCONN:
    case FI_EIO:
    case FI_EHOSTUNREACH:
    case FI_ENETUNREACH:
    case FI_ENETDOWN:
    case EPIPE:
    case FI_ETIMEDOUT:
    case FI_EADDRNOTAVAIL:
    case FI_EREMOTEIO:
      return true;
    default:
      return false;
  }
}

class FabricTransport final : public Transport {
 public:
  explicit FabricTransport(const FabricOptions& options)
      : rank_(options.rank),
        size_(options.size),
        use_inject_(options.use_inject),
        cancel_timeout_(options.cancel_timeout) {}
  ~FabricTransport() override;

  // Takes over `endpoint`'s libfabric objects and joins the group.
  absl::Status Init(const FabricOptions& options, FabricEndpoint::Impl& endpoint);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string Describe() const override { return absl::StrCat("fabric(", prov_name_, ")"); }

  absl::Status PostSend(int peer, uint64_t tag, const void* data, size_t bytes,
                        TransportRequest* request) override;
  absl::Status PostRecv(int peer, uint64_t tag, void* data, size_t capacity,
                        TransportRequest* request) override;
  absl::StatusOr<int> Progress() override;
  void Cancel(TransportRequest* request, const absl::Status& reason) override;

 private:
  using StreamKey = std::pair<int, uint64_t>;
  struct Stream {
    Op* head = nullptr;
    std::deque<Op*> waiting;
  };

  absl::Status CheckPost(int peer, const void* data, size_t bytes,
                         const TransportRequest* request) const;
  Op* NewOpLocked(OpKind kind, TransportRequest* request, int peer, uint64_t tag, char* data,
                  size_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DeleteOpLocked(Op* op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void StartRequest(TransportRequest* request, int peer, Op* op);
  char* ScratchLocked(Op* op, size_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Posting.
  absl::StatusOr<bool> TryPostLocked(Part* part) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SubmitLocked(Part* part) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FlushBacklogLocked(std::deque<Part*>& backlog) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RegisterLocked(Part* part) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseMrLocked(Part* part) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::deque<Part*>& BacklogFor(const Op* op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return op->kind == OpKind::kSend ? send_backlog_ : recv_backlog_;
  }

  // Completion.
  absl::Status ReadCqLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnCompletionLocked(const fi_cq_tagged_entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnHeadLocked(Part* part, size_t len, bool has_size, uint64_t size)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnErrorLocked(const fi_cq_err_entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RetirePartLocked(Part* part) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetErrorLocked(Op* op, absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SettleLocked(Op* op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CompleteRequestLocked(Op* op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseStreamLocked(Op* op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BeginCancelLocked(Op* op, const absl::Status& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AbandonLocked(Op* op, const absl::Status& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int rank_;
  const int size_;
  const bool use_inject_;
  const absl::Duration cancel_timeout_;

  // Fixed after Init.
  std::string prov_name_;
  size_t part_size_ = 0;  // largest part
  size_t head_size_ = 0;  // size of a message's head part
  size_t cq_data_size_ = 0;
  size_t inject_size_ = 0;
  bool mr_local_ = false;
  bool mr_prov_key_ = false;
  bool mr_endpoint_ = false;
  std::vector<fi_addr_t> addrs_;  // rank -> fi_addr (fi_addr == rank with FI_AV_TABLE)

  absl::Mutex mu_;
  InfoPtr info_;
  FidPtr<fid_fabric> fabric_ ABSL_GUARDED_BY(mu_);
  FidPtr<fid_domain> domain_ ABSL_GUARDED_BY(mu_);
  FidPtr<fid_cq> cq_ ABSL_GUARDED_BY(mu_);
  FidPtr<fid_av> av_ ABSL_GUARDED_BY(mu_);
  FidPtr<fid_ep> ep_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<Op*> ops_ ABSL_GUARDED_BY(mu_);
  std::deque<Part*> send_backlog_ ABSL_GUARDED_BY(mu_);
  std::deque<Part*> recv_backlog_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<StreamKey, Stream> streams_ ABSL_GUARDED_BY(mu_);
  // Head buffers for receives smaller than a head, kept for reuse.
  std::vector<std::unique_ptr<char[]>> bounce_pool_ ABSL_GUARDED_BY(mu_);
  uint64_t next_mr_key_ ABSL_GUARDED_BY(mu_) = 1;
  int finished_ ABSL_GUARDED_BY(mu_) = 0;  // requests completed since the last Progress()
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
};

// --- joining -------------------------------------------------------------------------------

absl::Status FabricTransport::Init(const FabricOptions& options, FabricEndpoint::Impl& endpoint) {
  TRIDENT_CHECK(endpoint.ep != nullptr) << "fabric: joining with an endpoint already used";
  info_ = std::move(endpoint.info);
  const fi_info* info = info_.get();
  prov_name_ = endpoint.prov_name;
  const size_t max_msg_size = info->ep_attr->max_msg_size;  // not 0: checked at the open
  part_size_ = std::min(max_msg_size, kDefaultMaxPart);
  if (options.max_part_bytes > 0) part_size_ = std::min(max_msg_size, options.max_part_bytes);
  head_size_ = std::min(kHeadBytes, part_size_);
  cq_data_size_ = info->domain_attr->cq_data_size;  // at least 4: checked at the open
  inject_size_ = info->tx_attr->inject_size;
  const uint64_t mr_mode = info->domain_attr->mr_mode;
  mr_local_ = (mr_mode & FI_MR_LOCAL) != 0 || options.force_mr_registration;
  mr_prov_key_ = (mr_mode & FI_MR_PROV_KEY) != 0;
  mr_endpoint_ = (mr_mode & FI_MR_ENDPOINT) != 0;
  TLOG(debug, "fabric: rank {}/{} joins over {}: part {} head {} inject {}{}", rank_, size_,
                prov_name_, part_size_, head_size_, inject_size_,
                mr_local_ ? " (registering buffers)" : "");

  absl::MutexLock lock(&mu_);
  fabric_ = std::move(endpoint.fabric);
  domain_ = std::move(endpoint.domain);
  cq_ = std::move(endpoint.cq);
  av_ = std::move(endpoint.av);
  ep_ = std::move(endpoint.ep);
  const std::string& name = endpoint.address;

  // Rendezvous: publish ours, read everyone's, insert in rank order so fi_addr i is rank i.
  RETURN_IF_ERROR(
      Annotate(options.store->Set(absl::StrCat("fabric/addr/", rank_), name, options.deadline),
               absl::StrCat("fabric setup of rank ", rank_, ": publishing its address")));
  addrs_.resize(size_);
  for (int r = 0; r < size_; ++r) {
    std::string addr = name;
    if (r != rank_) {
      absl::StatusOr<std::string> value =
          options.store->Get(absl::StrCat("fabric/addr/", r), options.deadline);
      if (!value.ok()) {
        return Annotate(value.status(), absl::StrCat("fabric setup of rank ", rank_,
                                                     ": reading the address of rank ", r));
      }
      addr = *std::move(value);
    }
    fi_addr_t fi_addr = FI_ADDR_NOTAVAIL;
    int inserted = fi_av_insert(av_.get(), addr.data(), 1, &fi_addr, 0, nullptr);
    if (inserted != 1) {
      return FiStatus(absl::StatusCode::kInvalidArgument,
                      absl::StrCat("fi_av_insert(address of rank ", r, ")"), inserted);
    }
    // FI_AV_TABLE numbers addresses 0, 1, ... in insertion order (the AV starts empty), so
    // fi_addr i is rank i; every op carries its peer's rank, so error messages need no
    // reverse lookup.
    addrs_[r] = fi_addr;
  }
  return absl::OkStatus();
}

FabricTransport::~FabricTransport() {
  const absl::Status reason =
      absl::AbortedError(absl::StrCat("fabric transport of rank ", rank_, " closed"));
  const absl::Time deadline = absl::Now() + cancel_timeout_;
  absl::MutexLock lock(&mu_);
  closing_ = true;
  if (ep_ != nullptr) {
    for (Op* op : std::vector<Op*>(ops_.begin(), ops_.end())) {
      if (ops_.contains(op)) BeginCancelLocked(op, reason);
    }
    // Wait (bounded) for libfabric to hand back the cancelled parts; not for the shm sends
    // abandoned at Cancel, which shm never returns (see Cancel).
    auto must_wait = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (Op* op : ops_) {
        if (!(op->kind == OpKind::kSend && op->request == nullptr && prov_name_ == "shm")) {
          return true;
        }
      }
      return false;
    };
    Backoff backoff;
    while (must_wait() && absl::Now() < deadline) {
      size_t before = ops_.size();
      if (!ReadCqLocked().ok()) break;
      if (ops_.size() < before) {
        backoff.Reset();
        continue;
      }
      mu_.Unlock();
      backoff.Pause();
      mu_.Lock();
    }
    // Closing the endpoint ends every operation: libfabric touches no buffer afterwards.
    CloseFid(ep_, "endpoint");
  }
  for (Op* op : std::vector<Op*>(ops_.begin(), ops_.end())) {
    if (op->request != nullptr) AbandonLocked(op, reason);
    DeleteOpLocked(op);
  }
  CloseFid(av_, "address vector");
  CloseFid(cq_, "completion queue");
  CloseFid(domain_, "domain");
  CloseFid(fabric_, "fabric");
}

// --- posting -------------------------------------------------------------------------------

absl::Status FabricTransport::CheckPost(int peer, const void* data, size_t bytes,
                                        const TransportRequest* request) const {
  if (request == nullptr) return absl::InvalidArgumentError("fabric: null request");
  if (peer < 0 || peer >= size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("fabric: peer ", peer, " out of range [0, ", size_, ")"));
  }
  if (data == nullptr && bytes > 0) {
    return absl::InvalidArgumentError(absl::StrCat("fabric: null buffer of ", bytes, " bytes"));
  }
  if (request->backend != nullptr) {
    return absl::InvalidArgumentError("fabric: request is still in flight");
  }
  return absl::OkStatus();
}

Op* FabricTransport::NewOpLocked(OpKind kind, TransportRequest* request, int peer, uint64_t tag,
                                 char* data, size_t size) {
  auto* op = new Op;
  op->kind = kind;
  op->request = request;
  op->peer = peer;
  op->tag = tag;
  op->data = data;
  op->size = size;
  ops_.insert(op);
  return op;
}

void FabricTransport::DeleteOpLocked(Op* op) {
  ForEachPart(op, [&](Part& part) { ReleaseMrLocked(&part); });
  if (op->bounce != nullptr && bounce_pool_.size() < kBouncePoolSize) {
    bounce_pool_.push_back(std::move(op->bounce));
  }
  ops_.erase(op);
  delete op;
}

void FabricTransport::StartRequest(TransportRequest* request, int peer, Op* op) {
  request->done.store(false, std::memory_order_relaxed);
  request->status = absl::OkStatus();
  request->bytes = 0;
  request->peer = peer;
  request->pending_parts = 0;
  request->backend = op;
}

// One buffer, sized once for the largest part that can need it (every part after the head
// is at most part_size_ and at most the rest of the message).
char* FabricTransport::ScratchLocked(Op* op, size_t size) {
  if (op->scratch == nullptr) {
    op->scratch_size = std::max<size_t>(size, 1);
    op->scratch = AllocateHostMemory(op->scratch_size);
  }
  TRIDENT_CHECK(size <= op->scratch_size)
      << "fabric: scratch of " << op->scratch_size << " bytes too small for " << size;
  return op->scratch.get();
}

absl::Status FabricTransport::RegisterLocked(Part* part) {
  uint64_t access = part->op->kind == OpKind::kSend ? FI_SEND : FI_RECV;
  uint64_t key = mr_prov_key_ ? 0 : next_mr_key_++;
  fid_mr* mr = nullptr;
  int rc = fi_mr_reg(domain_.get(), part->buf, part->len, access, 0, key, 0, &mr, nullptr);
  if (rc != 0) {
    return FiStatus(absl::StatusCode::kUnavailable,
                    absl::StrCat("fi_mr_reg(", part->len, " bytes)"), rc);
  }
  part->mr = mr;
  if (mr_endpoint_) {
    rc = fi_mr_bind(mr, &ep_->fid, 0);
    if (rc == 0) rc = fi_mr_enable(mr);
    if (rc != 0) {
      ReleaseMrLocked(part);
      return FiStatus(absl::StatusCode::kUnavailable, "fi_mr_bind/fi_mr_enable", rc);
    }
  }
  return absl::OkStatus();
}

void FabricTransport::ReleaseMrLocked(Part* part) {
  if (part->mr == nullptr) return;
  int rc = fi_close(&part->mr->fid);
  if (rc != 0) TLOG(warn, "fabric: closing a memory registration failed: {}", FiText(rc));
  part->mr = nullptr;
}

// Issues one libfabric operation. Returns false when libfabric said "not now".
absl::StatusOr<bool> FabricTransport::TryPostLocked(Part* part) {
  Op* op = part->op;
  if (mr_local_ && part->len > 0 && part->mr == nullptr) RETURN_IF_ERROR(RegisterLocked(part));
  void* desc = part->mr != nullptr ? fi_mr_desc(part->mr) : nullptr;
  const fi_addr_t addr = addrs_[op->peer];
  ssize_t rc;
  absl::string_view call;
  if (op->kind == OpKind::kRecv) {
    call = "fi_trecv";
    rc = fi_trecv(ep_.get(), part->buf, part->len, desc, addr, op->tag, /*ignore=*/0, &part->ctx);
  } else if (part->head) {
    call = "fi_tsenddata";
    rc = fi_tsenddata(ep_.get(), part->buf, part->len, desc, /*data=*/op->size, addr, op->tag,
                      &part->ctx);
  } else {
    call = "fi_tsend";
    rc = fi_tsend(ep_.get(), part->buf, part->len, desc, addr, op->tag, &part->ctx);
  }
  if (rc == 0) {
    part->state = PartState::kPosted;
    return true;
  }
  // -FI_ENOMEM: shm (util_srx) ran out of receive entries because unexpected messages of
  // other streams hold them; they go as their receives are posted, so retry like EAGAIN.
  if (rc == -FI_EAGAIN || rc == -FI_ENOMEM) return false;
  ReleaseMrLocked(part);
  return FiStatus(
      absl::StatusCode::kAborted,
      absl::StrCat(call, "(rank ", op->peer, ", tag ", op->tag, ", ", part->len, " bytes)"), rc);
}

// Posts the part now, or queues it behind earlier posts that libfabric has not taken yet. On
// success the part counts as outstanding; a hard error is returned and the part stays idle.
absl::Status FabricTransport::SubmitLocked(Part* part) {
  Op* op = part->op;
  std::deque<Part*>& backlog = BacklogFor(op);
  bool posted = false;
  if (backlog.empty()) {
    absl::StatusOr<bool> result = TryPostLocked(part);
    if (!result.ok()) return result.status();
    posted = *result;
  }
  if (!posted) {
    part->state = PartState::kQueued;
    backlog.push_back(part);
  }
  ++op->outstanding;
  if (part->user) ++op->user_outstanding;
  if (op->request != nullptr) op->request->pending_parts = op->outstanding;
  return absl::OkStatus();
}

void FabricTransport::FlushBacklogLocked(std::deque<Part*>& backlog) {
  while (!backlog.empty()) {
    Part* part = backlog.front();
    absl::StatusOr<bool> posted = TryPostLocked(part);
    if (posted.ok() && !*posted) return;  // still full
    backlog.pop_front();
    if (!posted.ok()) {
      Op* op = part->op;
      SetErrorLocked(op, posted.status());
      RetirePartLocked(part);
      SettleLocked(op);
    }
  }
}

absl::Status FabricTransport::PostSend(int peer, uint64_t tag, const void* data, size_t bytes,
                                       TransportRequest* request) {
  RETURN_IF_ERROR(CheckPost(peer, data, bytes, request));
  if (cq_data_size_ < 8 && (bytes >> (8 * cq_data_size_)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("fabric: a message of ", bytes,
                                                   " bytes is too large for provider ", prov_name_,
                                                   " (", cq_data_size_, " bytes of CQ data)"));
  }
  char* buf = static_cast<char*>(const_cast<void*>(data));
  absl::MutexLock lock(&mu_);
  if (closing_) return absl::FailedPreconditionError("fabric: transport is closing");
  if (use_inject_ && bytes <= inject_size_ && bytes <= head_size_ && send_backlog_.empty()) {
    // fi_tinjectdata copies the message out at once and reports no completion.
    ssize_t rc = fi_tinjectdata(ep_.get(), buf, bytes, /*data=*/bytes, addrs_[peer], tag);
    if (rc == 0) {
      StartRequest(request, peer, nullptr);
      request->bytes = bytes;
      request->backend = nullptr;
      request->done.store(true, std::memory_order_release);
      ++finished_;
      return absl::OkStatus();
    }
    if (rc != -FI_EAGAIN && rc != -FI_ENOMEM) {
      return FiStatus(absl::StatusCode::kAborted,
                      absl::StrCat("fi_tinjectdata(rank ", peer, ", tag ", tag, ")"), rc);
    }
    // Queue full: the ordinary path queues.
  }
  Op* op = NewOpLocked(OpKind::kSend, request, peer, tag, buf, bytes);
  const size_t head = std::min(bytes, head_size_);
  InitPart(op->head, op, buf, head, /*user=*/true);
  op->head.head = true;
  op->num_rest = (bytes - head + part_size_ - 1) / part_size_;
  if (op->num_rest > 0) op->rest.reset(new Part[op->num_rest]);
  for (size_t i = 0; i < op->num_rest; ++i) {
    size_t offset = head + i * part_size_;
    InitPart(op->rest[i], op, buf + offset, std::min(part_size_, bytes - offset), /*user=*/true);
  }
  StartRequest(request, peer, op);
  for (size_t i = 0; i <= op->num_rest; ++i) {
    absl::Status status = SubmitLocked(i == 0 ? &op->head : &op->rest[i - 1]);
    if (status.ok()) continue;
    if (i == 0) {  // nothing started: the caller gets the error
      request->backend = nullptr;
      op->request = nullptr;
      DeleteOpLocked(op);
      return status;
    }
    // A later part: the request fails once the posted parts are back.
    SetErrorLocked(op, status);
    break;
  }
  SettleLocked(op);
  return absl::OkStatus();
}

absl::Status FabricTransport::PostRecv(int peer, uint64_t tag, void* data, size_t capacity,
                                       TransportRequest* request) {
  RETURN_IF_ERROR(CheckPost(peer, data, capacity, request));
  absl::MutexLock lock(&mu_);
  if (closing_) return absl::FailedPreconditionError("fabric: transport is closing");
  Op* op = NewOpLocked(OpKind::kRecv, request, peer, tag, static_cast<char*>(data), capacity);
  char* head_buf = op->data;
  if (capacity < head_size_) {
    if (bounce_pool_.empty()) {
      op->bounce.reset(new char[head_size_]);
    } else {
      op->bounce = std::move(bounce_pool_.back());
      bounce_pool_.pop_back();
    }
    head_buf = op->bounce.get();
  }
  InitPart(op->head, op, head_buf, head_size_, /*user=*/true);
  op->head.head = true;
  StartRequest(request, peer, op);
  auto [it, inserted] = streams_.try_emplace(StreamKey(peer, tag));
  if (!inserted) {
    op->waiting = true;
    it->second.waiting.push_back(op);
    return absl::OkStatus();
  }
  it->second.head = op;
  op->stream_head = true;
  absl::Status status = SubmitLocked(&op->head);
  if (!status.ok()) {
    streams_.erase(it);
    request->backend = nullptr;
    op->request = nullptr;
    DeleteOpLocked(op);
    return status;
  }
  return absl::OkStatus();
}

// --- completion ----------------------------------------------------------------------------

absl::StatusOr<int> FabricTransport::Progress() {
  absl::MutexLock lock(&mu_);
  if (closing_) return absl::FailedPreconditionError("fabric: transport is closing");
  RETURN_IF_ERROR(ReadCqLocked());
  FlushBacklogLocked(send_backlog_);
  FlushBacklogLocked(recv_backlog_);
  int finished = finished_;
  finished_ = 0;
  return finished;
}

absl::Status FabricTransport::ReadCqLocked() {
  fi_cq_tagged_entry entries[kCqBatch];
  for (int batch = 0; batch < kMaxCqBatchesPerProgress; ++batch) {
    ssize_t n = fi_cq_read(cq_.get(), entries, kCqBatch);
    if (n > 0) {
      for (ssize_t i = 0; i < n; ++i) OnCompletionLocked(entries[i]);
      continue;
    }
    if (n == -FI_EAGAIN) return absl::OkStatus();
    if (n == -FI_EAVAIL) {
      fi_cq_err_entry err{};
      ssize_t m = fi_cq_readerr(cq_.get(), &err, 0);
      if (m == 1) {
        OnErrorLocked(err);
        continue;
      }
      if (m == -FI_EAGAIN) continue;
      return FiStatus(absl::StatusCode::kAborted, absl::StrCat("rank ", rank_, ": fi_cq_readerr"),
                      m);
    }
    return FiStatus(absl::StatusCode::kAborted, absl::StrCat("rank ", rank_, ": fi_cq_read"), n);
  }
  return absl::OkStatus();
}

void FabricTransport::OnCompletionLocked(const fi_cq_tagged_entry& entry) {
  auto* part = static_cast<Part*>(entry.op_context);
  TRIDENT_CHECK(part != nullptr && part->state == PartState::kPosted)
      << "fabric: completion for an unknown operation (flags " << entry.flags << ")";
  Op* op = part->op;
  if (op->kind == OpKind::kSend) {
    op->bytes += part->len;  // providers need not report len for sends
  } else if (part->head) {
    OnHeadLocked(part, entry.len, (entry.flags & FI_REMOTE_CQ_DATA) != 0, entry.data);
    return;
  } else if (entry.len != part->len) {
    SetErrorLocked(op, absl::AbortedError(absl::StrCat(
                           "rank ", op->peer, ": tag ", op->tag, ": a part of ", part->len,
                           " bytes arrived with ", entry.len, " (protocol error)")));
  } else if (part->user) {
    op->bytes += entry.len;
  }
  RetirePartLocked(part);
  SettleLocked(op);
}

// The head of a message arrived: it says the message's size, so the rest can be posted.
void FabricTransport::OnHeadLocked(Part* part, size_t len, bool has_size, uint64_t size) {
  Op* op = part->op;
  const uint64_t total = has_size ? size : len;
  if ((!has_size && len >= head_size_) || len != std::min<uint64_t>(total, head_size_)) {
    SetErrorLocked(
        op, absl::AbortedError(absl::StrCat(
                "rank ", op->peer, ": tag ", op->tag, ": a message head of ", len,
                " bytes announced ", has_size ? absl::StrCat(size) : "no",
                " bytes (protocol error; is rank ", op->peer, " another Trident version?)")));
    RetirePartLocked(part);
    SettleLocked(op);
    return;
  }
  const size_t rest = total - len;
  const bool fits = total <= op->size;
  // A cancelled receive still takes a message that is complete already.
  const bool to_user = fits && (!op->cancelled || rest == 0);
  if (!fits) {
    SetErrorLocked(op, absl::InvalidArgumentError(absl::StrCat(
                           "fabric: message from rank ", op->peer, " tag ", op->tag, " (", total,
                           " bytes) larger than the receive buffer of ", op->size, " bytes")));
  }
  if (to_user) {
    if (part->buf != op->data && len > 0) std::memcpy(op->data, part->buf, len);
    op->bytes = len;
  } else if (op->cancelled) {
    op->cut = true;
  }
  RetirePartLocked(part);
  TRIDENT_CHECK(op->rest == nullptr) << "fabric: a second head for one receive";
  op->num_rest = (rest + part_size_ - 1) / part_size_;
  if (op->num_rest > 0) op->rest.reset(new Part[op->num_rest]);
  op->drained = !to_user && rest > 0;
  for (size_t i = 0; i < op->num_rest; ++i) {
    size_t offset = i * part_size_;
    size_t n = std::min(part_size_, rest - offset);
    char* buf = to_user ? op->data + len + offset : ScratchLocked(op, std::min(part_size_, rest));
    InitPart(op->rest[i], op, buf, n, to_user);
    absl::Status status = SubmitLocked(&op->rest[i]);
    if (!status.ok()) {
      SetErrorLocked(op, status);
      break;
    }
  }
  SettleLocked(op);
}

void FabricTransport::OnErrorLocked(const fi_cq_err_entry& err) {
  auto* part = static_cast<Part*>(err.op_context);
  if (part == nullptr) {
    TLOG(warn, "fabric: rank {}: error completion without an operation: {} (prov_errno {})",
                 rank_, FiText(err.err), err.prov_errno);
    return;
  }
  TRIDENT_CHECK(part->state == PartState::kPosted)
      << "fabric: error completion for an operation not posted";
  Op* op = part->op;
  // shm reports some codes negated (-FI_ETRUNC); take the magnitude.
  const int code = err.err < 0 ? -err.err : err.err;
  if (code == FI_ECANCELED) {
    op->cut = true;
    if (!op->cancelled) {
      SetErrorLocked(
          op, absl::CancelledError(absl::StrCat("fabric: rank ", op->peer, ": ", KindName(op->kind),
                                                " (tag ", op->tag, ") cancelled by libfabric")));
    }
    // A cancelled part of a message whose head was taken: its data must still be received
    // (into scratch), or it would match the next receive on the stream.
    if (op->kind == OpKind::kRecv && !part->head) part->needs_drain = true;
  } else {
    char prov_text[256] = {0};
    const char* text =
        fi_cq_strerror(cq_.get(), err.prov_errno, err.err_data, prov_text, sizeof(prov_text));
    SetErrorLocked(op, WithPeer(absl::AbortedError(absl::StrCat(
                                    "rank ", op->peer, ": ", KindName(op->kind), " (tag ",
                                    op->tag, ") failed",
                                    IsPeerGone(code) ? " (peer unreachable or gone)" : "",
                                    ": fi_cq_readerr: ", FiText(-code), ": ", text ? text : "",
                                    " (prov_errno ", err.prov_errno, ")")),
                                op->peer));
  }
  RetirePartLocked(part);
  SettleLocked(op);
}

void FabricTransport::RetirePartLocked(Part* part) {
  Op* op = part->op;
  ReleaseMrLocked(part);
  part->state = PartState::kIdle;
  --op->outstanding;
  if (part->user) --op->user_outstanding;
  TRIDENT_CHECK(op->outstanding >= 0 && op->user_outstanding >= 0)
      << "fabric: part count went negative";
  if (op->request != nullptr) op->request->pending_parts = op->outstanding;
}

void FabricTransport::SetErrorLocked(Op* op, absl::Status status) {
  if (op->status.ok()) op->status = std::move(status);
}

// Moves an op on after any of its parts changed state: re-posts cancelled parts into scratch
// once nothing points into the caller's buffer, completes the request when it can, and
// deletes the op when libfabric holds none of its parts.
void FabricTransport::SettleLocked(Op* op) {
  if (op->kind == OpKind::kRecv && op->user_outstanding == 0 && !closing_) {
    ForEachPart(op, [&](Part& part) {
      if (!part.needs_drain) return;
      part.needs_drain = false;
      part.user = false;
      part.buf = ScratchLocked(op, op->rest[0].len);  // the first of the rest is the largest
      op->drained = true;
      absl::Status status = SubmitLocked(&part);
      if (!status.ok()) {
        TLOG(warn, "fabric: rank {}: cannot drain a cancelled message from rank {} tag {}: {}",
                     rank_, op->peer, op->tag, status);
        SetErrorLocked(op, status);
      }
    });
  }
  if (op->request != nullptr) {
    const bool early = (op->cancelled || !op->status.ok()) && op->user_outstanding == 0;
    if (op->outstanding == 0 || early) CompleteRequestLocked(op);
  }
  if (op->outstanding > 0) return;
  if (op->stream_head) ReleaseStreamLocked(op);
  DeleteOpLocked(op);
}

void FabricTransport::CompleteRequestLocked(Op* op) {
  TransportRequest* request = op->request;
  absl::Status status = op->status;
  if (status.ok() && (op->cut || op->drained)) status = op->cancel_reason;
  request->status = std::move(status);
  request->bytes = op->bytes;
  request->pending_parts = 0;
  request->backend = nullptr;
  request->done.store(true, std::memory_order_release);
  op->request = nullptr;
  ++finished_;
}

// The stream's head finished: post the next receive that waits on it.
void FabricTransport::ReleaseStreamLocked(Op* op) {
  auto it = streams_.find(StreamKey(op->peer, op->tag));
  TRIDENT_CHECK(it != streams_.end() && it->second.head == op) << "fabric: stream bookkeeping";
  op->stream_head = false;
  Stream& stream = it->second;
  stream.head = nullptr;
  while (!stream.waiting.empty()) {
    Op* next = stream.waiting.front();
    stream.waiting.pop_front();
    next->waiting = false;
    absl::Status status =
        closing_ ? absl::AbortedError("fabric: transport closed") : SubmitLocked(&next->head);
    if (status.ok()) {
      stream.head = next;
      next->stream_head = true;
      return;
    }
    SetErrorLocked(next, status);
    SettleLocked(next);  // not the head: does not come back here
  }
  streams_.erase(it);
}

// --- cancellation --------------------------------------------------------------------------

void FabricTransport::BeginCancelLocked(Op* op, const absl::Status& reason) {
  if (!op->cancelled) {
    op->cancelled = true;
    op->cancel_reason = reason;
  }
  if (op->waiting) {  // never posted
    auto it = streams_.find(StreamKey(op->peer, op->tag));
    TRIDENT_CHECK(it != streams_.end()) << "fabric: stream bookkeeping";
    std::deque<Op*>& waiting = it->second.waiting;
    waiting.erase(std::find(waiting.begin(), waiting.end(), op));
    op->waiting = false;
    op->cut = true;
    SettleLocked(op);
    return;
  }
  ForEachPart(op, [&](Part& part) {
    if (part.state == PartState::kQueued) {
      std::deque<Part*>& backlog = BacklogFor(op);
      backlog.erase(std::find(backlog.begin(), backlog.end(), &part));
      op->cut = true;
      // Receive parts after the head: their message is under way and must be drained.
      if (op->kind == OpKind::kRecv && !part.head && part.user) part.needs_drain = true;
      RetirePartLocked(&part);
    } else if (part.state == PartState::kPosted && (part.user || closing_)) {
      // Providers cancel a receive that has not matched; a matched one, and most sends,
      // complete normally, which Cancel() waits for.
      int rc = fi_cancel(&ep_->fid, &part.ctx);
      if (rc != 0 && rc != -FI_ENOENT) {
        TLOG(debug, "fabric: fi_cancel on rank {}: {}", rank_, FiText(rc));
      }
    }
  });
  SettleLocked(op);
}

// Completes the request now although libfabric may still hold some of its parts; the op
// lives on until they come back (or the endpoint is closed).
void FabricTransport::AbandonLocked(Op* op, const absl::Status& reason) {
  if (op->request == nullptr) return;
  if (!op->cancelled) {
    op->cancelled = true;
    op->cancel_reason = reason;
  }
  op->cut = true;
  CompleteRequestLocked(op);
}

void FabricTransport::Cancel(TransportRequest* request, const absl::Status& reason) {
  TRIDENT_CHECK(request != nullptr) << "fabric: Cancel(nullptr)";
  const absl::Time deadline = absl::Now() + cancel_timeout_;
  {
    absl::MutexLock lock(&mu_);
    if (request->IsDone()) return;
    auto* op = static_cast<Op*>(request->backend);
    TRIDENT_CHECK(op != nullptr && ops_.contains(op))
        << "fabric: Cancel of a request that this transport does not hold";
    BeginCancelLocked(op, reason);
    if (request->IsDone()) return;
    // shm never returns a send whose receiver is gone (or will not receive), and it never
    // touches a send buffer from this process after the post: our parts are either at most
    // 4 KiB (copied into shared memory at the post) or large, which the receiver copies out
    // with process_vm_readv (CMA). So the request can complete now; the Op stays until
    // libfabric returns its parts or the transport closes. (Were CMA unavailable, shm would
    // copy large sends in pieces during our progress calls; the pieces would come from
    // memory the caller may have reused, which only the abandoned receiver can see.)
    if (op->kind == OpKind::kSend && prov_name_ == "shm") {
      TLOG(debug, "fabric: rank {}: send to rank {} (tag {}) abandoned at cancel", rank_,
                    op->peer, op->tag);
      AbandonLocked(op, reason);
      return;
    }
  }
  Backoff backoff;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (request->IsDone()) return;
      absl::Status status = ReadCqLocked();
      if (request->IsDone()) return;
      if (!status.ok() || absl::Now() >= deadline) {
        auto* op = static_cast<Op*>(request->backend);
        TLOG(warn, 
            "fabric: rank {}: libfabric did not return a cancelled {} (rank {}, tag {}) within "
            "{}; the request completes now ({})",
            rank_, KindName(op->kind), op->peer, op->tag, absl::FormatDuration(cancel_timeout_),
            status.ok() ? "timeout" : status.ToString());
        AbandonLocked(op, reason);
        return;
      }
    }
    backoff.Pause();
  }
}

}  // namespace

std::vector<std::string> ListFabricProviders() {
  std::vector<std::string> names;
  fi_info* raw = nullptr;
  if (fi_getinfo(kFiVersion, nullptr, nullptr, 0, nullptr, &raw) != 0) return names;
  InfoPtr info(raw);
  for (fi_info* cur = info.get(); cur != nullptr; cur = cur->next) {
    if (cur->fabric_attr == nullptr || cur->fabric_attr->prov_name == nullptr) continue;
    std::string name = cur->fabric_attr->prov_name;
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  return names;
}

int RemoveShmRegionsOf(int pid) {
  const std::string prefix = absl::StrCat(pid, ":");
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return 0;
  int removed = 0;
  while (const dirent* entry = readdir(dir)) {
    if (absl::StartsWith(entry->d_name, prefix) &&
        unlinkat(dirfd(dir), entry->d_name, 0) == 0) {
      ++removed;
    }
  }
  closedir(dir);
  return removed;
}

int RemoveShmRegionsOfDeadProcesses() {
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return 0;
  std::vector<int> dead;
  while (const dirent* entry = readdir(dir)) {
    // Only libfabric's "<pid>:<n>..." names.
    absl::string_view name(entry->d_name);
    const size_t colon = name.find(':');
    int pid = 0;
    if (colon == absl::string_view::npos || !absl::SimpleAtoi(name.substr(0, colon), &pid) ||
        pid <= 0) {
      continue;
    }
    if (::kill(pid, 0) != 0 && errno == ESRCH &&
        std::find(dead.begin(), dead.end(), pid) == dead.end()) {
      dead.push_back(pid);
    }
  }
  closedir(dir);
  int removed = 0;
  for (int pid : dead) removed += RemoveShmRegionsOf(pid);
  return removed;
}

absl::StatusOr<std::unique_ptr<Transport>> NewFabricTransport(
    const FabricOptions& options, std::unique_ptr<FabricEndpoint> endpoint) {
  if (options.size <= 0 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("fabric: rank ", options.rank, " outside a group of size ", options.size));
  }
  if (options.store == nullptr) return absl::InvalidArgumentError("fabric: no store");
  if (endpoint == nullptr) {
    ASSIGN_OR_RETURN(endpoint, OpenFabricEndpoint(options.provider, options.iface,
                                                  static_cast<size_t>(options.size)));
  } else {
    RETURN_IF_ERROR(CheckFabricEndpoint(*endpoint, options));
  }
  auto transport = std::make_unique<FabricTransport>(options);
  RETURN_IF_ERROR(transport->Init(options, endpoint->impl()));
  return std::unique_ptr<Transport>(std::move(transport));
}

// Before the first fi_getinfo: libfabric's shm provider chains its own handlers in front of
// the ones it finds when it initialises, which must not be libinfinipath's by then.
int QuietUnusedProviders(absl::string_view provider) {
  static std::once_flag once;
  std::call_once(once, [provider] {
    // Read when libfabric first initialises its providers (the first fi_getinfo); a value the
    // user set wins, and so does a request for a psm provider.
    if (!absl::StartsWith(provider, "psm")) setenv("FI_PROVIDER", "^psm,psm2,psm3", /*overwrite=*/0);
  });
  const int restored = RestoreInfinipathHandlers();
  if (restored > 0) {
    TLOG(debug, "fabric: restored the default action of {} signals that libinfinipath had taken",
                  restored);
  }
  return restored;
}

absl::StatusOr<std::unique_ptr<FabricEndpoint>> OpenFabricEndpoint(const std::string& provider,
                                                                   const std::string& iface,
                                                                   size_t av_size_hint) {
  QuietUnusedProviders(provider);
  // Once per process, before its first endpoint: regions left by a dead process that had our
  // pid (ours have "<pid>:<n>" names, with n counting our endpoints).
  static const int stale = RemoveShmRegionsOf(getpid());
  if (stale > 0) TLOG(debug, "fabric: removed {} stale shm regions of pid {}", stale, getpid());
  auto impl = std::make_unique<FabricEndpoint::Impl>();
  RETURN_IF_ERROR(impl->Open(provider, iface, av_size_hint));
  return std::make_unique<FabricEndpoint>(std::move(impl));
}

absl::Status CheckFabricEndpoint(const FabricEndpoint& endpoint, const FabricOptions& options) {
  const std::string provider = ResolveProvider(options.provider);
  const std::string wanted = EndpointKind(
      provider, IsIpProvider(provider) ? (options.iface.empty() ? "lo" : options.iface) : "");
  const std::string have = endpoint.Describe();
  if (have == wanted) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("fabric: the endpoint opened in advance serves ",
                                                 have, ", not ", wanted));
}

}  // namespace trident
