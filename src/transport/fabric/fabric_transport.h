// FabricTransport: the Transport (transport/transport.h) over one libfabric reliable-datagram
// endpoint (FI_EP_RDM, tagged messages): shm within a node, tcp (the "tcp;ofi_rxm" stack) on
// any network, efa on AWS.
//
// Setup has two halves. Opening (OpenFabricEndpoint) needs no group: fabric, domain, one
// completion queue, an address vector (FI_AV_TABLE) and the enabled endpoint with its name.
// Joining (NewFabricTransport) publishes that name in the store at "fabric/addr/<rank>", reads
// every rank's and inserts them in rank order, so that fi_addr i is rank i. NewFabricTransport
// opens the endpoint itself unless it is given one opened in advance (a hot spare's, so that
// promotion costs only the join). All ranks of the group must join with the same store
// (namespaced by the caller per group and epoch: the keys are not deleted) and the same
// provider.
//
// Matching: messages travel as tagged sends with the caller's 64-bit tag, received with
// directed receives (FI_DIRECTED_RECV) from the peer's address; FI_ORDER_SAS keeps the
// messages of one (peer, tag) in order. libfabric never sees a receive buffer smaller than
// what arrives (its shm and tcp providers mishandle that in 1.17): each message starts with a
// head part that carries the message size as remote CQ data, and the receiver posts the rest
// with exact sizes. Receives of one (peer, tag) are therefore posted one after the other.
// See fabric_transport.cc for the protocol.
//
// Errors: a completion error names the peer rank and keeps libfabric's text and codes;
// a peer that is gone (connection refused or reset, EIO, ...) and any other failure of an
// operation are kAborted; a message larger than the receive buffer is kInvalidArgument. Over
// tcp a send to a dead rank fails; over shm it waits (a silent peer is the health layer's to
// detect), and a posted receive never fails on its own.
//
// Cancel withdraws what libfabric has not started and waits up to cancel_timeout for the
// rest. An operation libfabric cannot withdraw (a receive matched to a rendezvous whose
// sender stalls) makes Cancel complete the request anyway and log a warning; libfabric may
// then still write into that buffer until the transport is destroyed (closing the endpoint
// ends every operation).
//
// Flow control is libfabric's, and its buffers for unexpected messages (sent, no receive
// posted yet) are bounded. A sender must not run more than about a thousand messages (a
// message over 4 KiB counts twice) ahead of the receives posted for them: shm in 1.17 then
// jams the endpoint for good (it leaks an rx entry per progress call in smr_progress_cmd_msg
// once its 1024 = FI_SHM_RX_SIZE command contexts are used), and over tcp the second part of
// a message can wait behind unexpected first parts that nobody receives.
//
// Ownership and threads: the transport owns every libfabric object; the caller owns the
// TransportRequests and buffers (transport.h). Every method may be called from any thread;
// the libfabric calls are serialised by one mutex (the domain is opened FI_THREAD_DOMAIN).
// Completion is driven by Progress() (libfabric's manual data progress).
//
//   FabricOptions options{.rank = 1, .size = 4, .store = store.get(), .provider = "tcp",
//                         .deadline = trident::DeadlineIn(absl::Seconds(30))};
//   ASSIGN_OR_RETURN(std::unique_ptr<Transport> transport, NewFabricTransport(options));
//
//   // A spare, ahead of time:
//   ASSIGN_OR_RETURN(std::unique_ptr<FabricEndpoint> endpoint, OpenFabricEndpoint("tcp", ""));
//   // At promotion:
//   ASSIGN_OR_RETURN(transport, NewFabricTransport(options, std::move(endpoint)));
#ifndef TRIDENT_TRANSPORT_FABRIC_FABRIC_TRANSPORT_H_
#define TRIDENT_TRANSPORT_FABRIC_FABRIC_TRANSPORT_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "transport/transport.h"
#include "trident/store.h"

namespace trident {

struct FabricOptions {
  int rank = 0;
  int size = 0;
  Store* store = nullptr;  // rendezvous; not owned, used only during NewFabricTransport
  // libfabric provider: "shm", "tcp" (meaning "tcp;ofi_rxm"), "efa", or any RDM provider name
  // that fi_info lists; "" means "shm". The comm layer fills it from TRIDENT_FABRIC_PROVIDER.
  std::string provider;
  // Network interface for IP providers (tcp, net); "" means "lo".
  std::string iface;
  // Deadline for setup (the store rendezvous). Set it: the default never expires.
  absl::Time deadline = absl::InfiniteFuture();

  // Internal and testing knobs; the defaults are right for production.
  // Largest part of a message; 0 means min(max_msg_size, 16 MiB). Tests set it tiny to
  // exercise splitting.
  size_t max_part_bytes = 0;
  // Register every buffer with fi_mr_reg even when the provider does not ask for it
  // (FI_MR_LOCAL), to exercise the registration path on shm and tcp.
  bool force_mr_registration = false;
  // Use fi_tinject for sends up to the provider's inject_size.
  bool use_inject = true;
  // How long Cancel (and the destructor) wait for libfabric to confirm a cancellation.
  absl::Duration cancel_timeout = absl::Seconds(1);
};

// A libfabric endpoint opened ahead of its group: everything of a FabricTransport that needs
// neither rank, group size nor store. Owns its libfabric objects; used by one thread at a time.
class FabricEndpoint {
 public:
  struct Impl;  // defined in fabric_transport.cc
  explicit FabricEndpoint(std::unique_ptr<Impl> impl);
  ~FabricEndpoint();
  FabricEndpoint(const FabricEndpoint&) = delete;
  FabricEndpoint& operator=(const FabricEndpoint&) = delete;

  // The provider it serves, resolved, and for IP providers the interface: "tcp;ofi_rxm on lo".
  std::string Describe() const;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Debian's libfabric links the psm providers' libraries, and one of them (libinfinipath, PSM
// 1) installs handlers for SIGSEGV, SIGBUS, SIGILL, SIGABRT, SIGINT, SIGTERM and SIGFPE from a
// load-time constructor in every process that links libfabric: a rank that aborts then writes
// "<program>.<host>-<pid>,<host>.btr" into its working directory, and SIGINT and SIGTERM no
// longer act as the program expects. Trident never uses psm. This restores the default action
// of each of those signals whose handler lives in libinfinipath (a handler the program
// installed is left alone) and, once per process and unless the user set FI_PROVIDER or asks
// for a psm provider, keeps libfabric from initialising the psm providers
// (FI_PROVIDER=^psm,psm2,psm3). Returns how many handlers it restored. OpenFabricEndpoint
// calls it, and the handlers are also restored when the program loads this file (always, in
// libtrident.so); trident-run also starts its ranks with IPATH_NO_BACKTRACE=1, so that the
// handlers are never installed in them.
int QuietUnusedProviders(absl::string_view provider = "");

// Opens an endpoint. `provider` and `iface` as in FabricOptions. `av_size_hint` is the expected
// group size (0: the provider's default); the address vector is not limited to it (libfabric
// 1.17: tcp grows it on demand; shm takes at most 256 peers whatever the hint).
absl::StatusOr<std::unique_ptr<FabricEndpoint>> OpenFabricEndpoint(const std::string& provider,
                                                                   const std::string& iface,
                                                                   size_t av_size_hint = 0);

// OK when `endpoint` can serve a transport with `options`: the same provider (after "tcp" means
// "tcp;ofi_rxm") and, for IP providers, the same interface. Else kInvalidArgument saying both.
absl::Status CheckFabricEndpoint(const FabricEndpoint& endpoint, const FabricOptions& options);

// Joins the group of `options`, over `endpoint` when one is given (it must pass
// CheckFabricEndpoint), else over an endpoint opened here. The endpoint is consumed, also when
// this fails: its address may have been published and its address vector filled in part.
absl::StatusOr<std::unique_ptr<Transport>> NewFabricTransport(
    const FabricOptions& options, std::unique_ptr<FabricEndpoint> endpoint = nullptr);

// libfabric's shm provider keeps each endpoint's region in /dev/shm under "<pid>:..." and
// unlinks it only when the endpoint is closed: a process killed with SIGKILL leaves it behind.
// Removes the regions of `pid`, which must be dead (or be the caller, before it opens any shm
// endpoint: a stale region of a dead process with the same pid makes fi_enable fail with
// EBUSY). Returns how many were removed.
int RemoveShmRegionsOf(int pid);
// The same for every region whose pid names no live process (left by a job whose agent was
// killed too: its children die by PDEATHSIG and no one is left to clean up). Returns how many
// were removed.
int RemoveShmRegionsOfDeadProcesses();

// The distinct provider names that fi_getinfo offers on this machine, in its order (e.g.
// "shm", "tcp;ofi_rxm", "tcp", ...). Used in error messages and by tools.
std::vector<std::string> ListFabricProviders();

}  // namespace trident

#endif  // TRIDENT_TRANSPORT_FABRIC_FABRIC_TRANSPORT_H_
