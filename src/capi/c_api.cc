// The C ABI (include/trident/c_api.h) over the C++ API: handles wrap the C++ objects, every
// entry point converts absl::Status to its code and records the message in a thread-local,
// and no exception crosses the C boundary.
#include "trident/c_api.h"

#include <cstddef>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/params.h"
#include "common/status_macros.h"
#include "trident/checkpoint.h"
#include "trident/communicator.h"
#include "trident/resilient.h"
#include "trident/runtime.h"
#include "trident/store.h"
#include "trident/tensor.h"
#include "trident/version.h"

struct trident_comm {
  std::shared_ptr<trident::Communicator> comm;
  bool borrowed = false;  // the runtime's world: trident_comm_destroy leaves it alone
};
struct trident_work {
  std::shared_ptr<trident::Work> work;
};
struct trident_ckpt {
  std::unique_ptr<trident::CheckpointEngine> engine;
};
struct trident_save {
  std::shared_ptr<trident::CheckpointSave> save;
};
struct trident_runtime {
  std::unique_ptr<trident::Runtime> runtime;
  trident_comm world{nullptr, /*borrowed=*/true};
};

namespace trident {
namespace {

thread_local std::string last_error;
thread_local int last_code = TRIDENT_OK;

int Fail(const absl::Status& status) {
  if (status.ok()) return TRIDENT_OK;
  last_code = static_cast<int>(status.code());
  last_error = status.ToString();
  return last_code;
}

int Invalid(absl::string_view what) { return Fail(absl::InvalidArgumentError(what)); }

// Runs `body` (returning an int code) so that no exception leaves the C ABI.
template <typename F>
int Guard(const char* where, F&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return Fail(absl::ResourceExhaustedError(absl::StrCat(where, ": out of memory")));
  } catch (const std::exception& e) {
    return Fail(absl::InternalError(absl::StrCat(where, ": ", e.what())));
  } catch (...) {
    return Fail(absl::InternalError(absl::StrCat(where, ": unknown exception")));
  }
}

absl::Status StatusOf(int code, absl::string_view message) {
  if (code < 0 || code > TRIDENT_UNAUTHENTICATED) code = TRIDENT_UNKNOWN;
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

absl::Time DeadlineAfterMs(int64_t timeout_ms) {
  return timeout_ms < 0 ? absl::InfiniteFuture() : absl::Now() + absl::Milliseconds(timeout_ms);
}

bool ValidDType(int dtype) { return dtype >= TRIDENT_DTYPE_F32 && dtype <= TRIDENT_DTYPE_I64; }
bool ValidOp(int op) { return op >= TRIDENT_SUM && op <= TRIDENT_AVG; }

Tensor Flat(const void* data, size_t count, int dtype) {
  return Tensor(const_cast<void*>(data), static_cast<DType>(dtype),
                {static_cast<int64_t>(count)});
}

// The common checks of an op; an empty string when they pass.
std::string CheckOp(const char* op, const trident_comm* comm, int dtype, const int* reduce) {
  if (comm == nullptr || comm->comm == nullptr) return absl::StrCat(op, ": comm is NULL");
  if (!ValidDType(dtype)) {
    return absl::StrCat(op, ": dtype ", dtype, " is not a TRIDENT_DTYPE_* (0..7)");
  }
  if (reduce != nullptr && !ValidOp(*reduce)) {
    return absl::StrCat(op, ": reduction ", *reduce, " is not a TRIDENT_SUM..TRIDENT_AVG (0..4)");
  }
  return "";
}

OpOptions Options(int64_t timeout_ms) {
  OpOptions options;
  if (timeout_ms > 0) options.timeout = absl::Milliseconds(timeout_ms);
  return options;
}

// Hands an issued op to the caller: waits for it when `out` is NULL; an op that already
// failed is returned as its code.
int Issue(std::shared_ptr<Work> work, trident_work** out) {
  if (out == nullptr) return Fail(work->Wait());
  *out = nullptr;
  if (work->IsCompleted() && !work->status().ok()) return Fail(work->status());
  *out = new trident_work{std::move(work)};
  return TRIDENT_OK;
}

// Opens the store an options struct names; nullptr for the environment's (TRIDENT_STORE).
absl::StatusOr<std::shared_ptr<Store>> OpenStore(const char* url, absl::Time deadline) {
  if (url == nullptr || url[0] == '\0') return std::shared_ptr<Store>();
  if (absl::string_view(url) == "memory") return std::shared_ptr<Store>(NewMemoryStore());
  absl::StatusOr<std::unique_ptr<Store>> store =
      ConnectStore(url, ParamString("TRIDENT_JOB_TOKEN"), deadline);
  if (!store.ok()) return store.status();
  return std::shared_ptr<Store>(*std::move(store));
}

CheckpointState StateOf(const trident_buffer* buffers, size_t count) {
  CheckpointState state;
  for (size_t i = 0; i < count; ++i) {
    const trident_buffer& b = buffers[i];
    TensorPlacement placement;
    if (b.global_count > 0) {
      placement.global_shape = {static_cast<int64_t>(b.global_count)};
      placement.offset = {static_cast<int64_t>(b.offset)};
    }
    placement.replica_index = b.replica_index;
    placement.replica_count = b.replica_count > 0 ? b.replica_count : 1;
    state.tensors.push_back(
        {b.name != nullptr ? b.name : "", Flat(b.data, b.count, b.dtype), placement});
  }
  return state;
}

std::vector<TensorRequest> RequestsOf(const trident_buffer* buffers, size_t count) {
  std::vector<TensorRequest> requests;
  for (size_t i = 0; i < count; ++i) {
    const trident_buffer& b = buffers[i];
    TensorRequest r;
    r.name = b.name != nullptr ? b.name : "";
    r.tensor = Flat(b.data, b.count, b.dtype);
    r.offset = {static_cast<int64_t>(b.offset)};
    if (b.global_count > 0) r.global_shape = {static_cast<int64_t>(b.global_count)};
    requests.push_back(std::move(r));
  }
  return requests;
}

// The buffers' own checks, so that a bad one is kInvalidArgument naming it.
std::string CheckBuffers(const char* where, const trident_buffer* buffers, size_t count) {
  if (buffers == nullptr && count > 0) return absl::StrCat(where, ": buffers is NULL");
  for (size_t i = 0; i < count; ++i) {
    const trident_buffer& b = buffers[i];
    if (b.name == nullptr || b.name[0] == '\0') {
      return absl::StrCat(where, ": buffer ", i, " has no name");
    }
    if (!ValidDType(b.dtype)) {
      return absl::StrCat(where, ": buffer '", b.name, "': dtype ", b.dtype,
                          " is not a TRIDENT_DTYPE_* (0..7)");
    }
    if (b.data == nullptr && b.count > 0) {
      return absl::StrCat(where, ": buffer '", b.name, "': data is NULL");
    }
  }
  return "";
}

trident_recovery RecoveryOf(const Recovery& r) {
  trident_recovery out;
  out.old_epoch = r.old_epoch;
  out.epoch = r.epoch;
  out.world_size = r.world_size;
  out.failed_rank = r.failed.empty() ? -1 : r.failed.front().rank;
  out.rejoined = r.rejoined ? 1 : 0;
  out.wait_ms = absl::ToInt64Milliseconds(r.wait);
  out.rebuild_ms = absl::ToInt64Milliseconds(r.rebuild);
  return out;
}

// A Trainable made of the C callbacks.
class CTrainable : public Trainable {
 public:
  explicit CTrainable(const trident_trainable& t) : t_(t) {}

  absl::Status Bind(Communicator& world, const BindInfo& info) override {
    world_.comm = std::shared_ptr<Communicator>(std::shared_ptr<Communicator>(), &world);
    if (t_.bind == nullptr) return absl::OkStatus();
    Clear();
    return Result("bind", t_.bind(t_.user, &world_, info.epoch, info.fresh ? 1 : 0));
  }
  absl::Status Step() override {
    Clear();
    return Result("step", t_.step(t_.user));
  }
  int64_t step() const override { return t_.current_step(t_.user); }
  CheckpointState SaveState() override {
    const trident_buffer* buffers = nullptr;
    size_t count = 0;
    Clear();
    absl::Status s = Result("state", t_.state(t_.user, &buffers, &count));
    if (!s.ok()) {
      // SaveState cannot fail in the C++ interface: an empty state fails the save's checks
      // on no rank, so say why here.
      TLOG(error, "trident_run_resilient: {}", s);
      return {};
    }
    return StateOf(buffers, count);
  }
  std::vector<TensorRequest> RestoreRequests() override {
    const trident_buffer* buffers = nullptr;
    size_t count = 0;
    Clear();
    absl::Status s = Result("state", t_.state(t_.user, &buffers, &count));
    if (!s.ok()) {
      TLOG(error, "trident_run_resilient: {}", s);
      return {};
    }
    return RequestsOf(buffers, count);
  }
  void SetRestoredStep(int64_t step) override {
    if (t_.set_restored_step != nullptr) t_.set_restored_step(t_.user, step);
  }
  void ResetToInitialState() override {
    if (t_.reset != nullptr) t_.reset(t_.user);
  }

 private:
  // Clears the thread's last error before a callback, so that a message it sets is its own.
  static void Clear() {
    last_code = TRIDENT_OK;
    last_error.clear();
  }
  static absl::Status Result(const char* what, int rc) {
    if (rc == TRIDENT_OK) return absl::OkStatus();
    std::string message = last_code != TRIDENT_OK && !last_error.empty()
                              ? last_error
                              : absl::StrCat("returned ", trident_code_name(rc));
    return StatusOf(rc, absl::StrCat("trainable ", what, " callback: ", message));
  }

  trident_trainable t_;
  trident_comm world_{nullptr, /*borrowed=*/true};
};

}  // namespace
}  // namespace trident

using trident::Fail;
using trident::Guard;
using trident::Invalid;

extern "C" {

const char* trident_last_error(void) { return trident::last_error.c_str(); }
int trident_last_error_code(void) { return trident::last_code; }
void trident_set_last_error(int code, const char* message) {
  trident::last_code = code;
  trident::last_error = code == TRIDENT_OK ? std::string()
                                           : trident::StatusOf(code, message ? message : "")
                                                 .ToString();
}

const char* trident_code_name(int code) {
  static const char* const kNames[] = {
      "OK",      "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",   "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  if (code < 0 || code > TRIDENT_UNAUTHENTICATED) return "UNKNOWN_CODE";
  return kNames[code];
}

int trident_is_recoverable(int code, const char* message) {
  if (code == TRIDENT_OK) return 0;
  return trident::IsRecoverable(trident::StatusOf(code, message ? message : "")) ? 1 : 0;
}

const char* trident_version(void) { return trident::Version(); }
int trident_version_code(void) { return trident::VersionCode(); }

size_t trident_dtype_size(int dtype) {
  return trident::ValidDType(dtype) ? trident::DTypeSize(static_cast<trident::DType>(dtype)) : 0;
}

// --- Communicators ------------------------------------------------------------------------

void trident_comm_options_init(trident_comm_options* options) {
  if (options == nullptr) return;
  *options = trident_comm_options{};
  options->struct_size = sizeof(trident_comm_options);
  options->rank = -1;
  options->world_size = -1;
}

int trident_comm_create(const trident_comm_options* options, trident_comm** out) {
  return Guard("trident_comm_create", [&] {
    if (out == nullptr) return Invalid("trident_comm_create: out is NULL");
    *out = nullptr;
    trident_comm_options o;
    trident_comm_options_init(&o);
    if (options != nullptr) {
      if (options->struct_size < offsetof(trident_comm_options, name) + sizeof(o.name)) {
        return Invalid(absl::StrCat("trident_comm_create: options->struct_size ",
                                    options->struct_size,
                                    " is too small: initialise with trident_comm_options_init"));
      }
      o = *options;
    }
    trident::HostCommOptions host;
    host.rank = o.rank;
    host.world_size = o.world_size;
    if (o.provider != nullptr) host.provider = o.provider;
    if (o.timeout_ms > 0) host.timeout = absl::Milliseconds(o.timeout_ms);
    if (o.name != nullptr && o.name[0] != '\0') host.name = o.name;
    if (absl::Status params = trident::CheckParams(); !params.ok()) {
      return Fail(trident::Annotate(params, "trident_comm_create"));
    }
    const absl::Duration timeout =
        host.timeout > absl::ZeroDuration() ? host.timeout
                                            : trident::ParamMillis("TRIDENT_TIMEOUT_MS");
    const char* url = o.store;
    const int world_size = host.world_size >= 0
                               ? host.world_size
                               : static_cast<int>(trident::ParamInt("TRIDENT_WORLD_SIZE"));
    // A world of one needs no store: a program run on its own works as under trident-run.
    if ((url == nullptr || url[0] == '\0') && world_size == 1 &&
        trident::ParamString("TRIDENT_STORE").empty()) {
      url = "memory";
    }
    absl::StatusOr<std::shared_ptr<trident::Store>> store =
        trident::OpenStore(url, absl::Now() + timeout);
    if (!store.ok()) return Fail(trident::Annotate(store.status(), "trident_comm_create"));
    host.store = *std::move(store);
    absl::StatusOr<std::unique_ptr<trident::Communicator>> comm =
        trident::CreateHostCommunicator(std::move(host));
    if (!comm.ok()) return Fail(comm.status());
    *out = new trident_comm{std::shared_ptr<trident::Communicator>(*std::move(comm))};
    return TRIDENT_OK;
  });
}

int trident_comm_split(trident_comm* comm, int color, int key, trident_comm** out) {
  return Guard("trident_comm_split", [&] {
    if (out == nullptr) return Invalid("trident_comm_split: out is NULL");
    *out = nullptr;
    if (comm == nullptr || comm->comm == nullptr) return Invalid("trident_comm_split: comm is NULL");
    absl::StatusOr<std::unique_ptr<trident::Communicator>> sub = comm->comm->Split(color, key);
    if (!sub.ok()) return Fail(sub.status());
    if (*sub != nullptr) {
      *out = new trident_comm{std::shared_ptr<trident::Communicator>(*std::move(sub))};
    }
    return TRIDENT_OK;
  });
}

int trident_comm_rank(const trident_comm* comm) {
  return comm != nullptr && comm->comm != nullptr ? comm->comm->rank() : -1;
}
int trident_comm_size(const trident_comm* comm) {
  return comm != nullptr && comm->comm != nullptr ? comm->comm->size() : -1;
}

void trident_comm_abort(trident_comm* comm, const char* reason) {
  if (comm == nullptr || comm->comm == nullptr) return;
  comm->comm->Abort(absl::AbortedError(
      absl::StrCat("aborted by the caller: ", reason != nullptr ? reason : "(no reason given)")));
}

int trident_comm_abort_status(const trident_comm* comm) {
  return Guard("trident_comm_abort_status", [&] {
    if (comm == nullptr || comm->comm == nullptr) return Invalid("trident_comm_abort_status: comm is NULL");
    return Fail(comm->comm->AbortStatus());
  });
}

void trident_comm_destroy(trident_comm* comm) {
  if (comm == nullptr || comm->borrowed) return;
  delete comm;
}

#define TRIDENT_CHECK_OP(name, comm, dtype, reduce)                               \
  if (std::string bad = trident::CheckOp(name, comm, dtype, reduce); !bad.empty()) { \
    if (work != nullptr) *work = nullptr;                                         \
    return Invalid(bad);                                                          \
  }

int trident_allreduce(trident_comm* comm, const void* in, void* out, size_t count, int dtype,
                      int op, int64_t timeout_ms, trident_work** work) {
  return Guard("trident_allreduce", [&] {
    TRIDENT_CHECK_OP("trident_allreduce", comm, dtype, &op);
    return trident::Issue(comm->comm->AllReduce(trident::Flat(in, count, dtype),
                                                trident::Flat(out, count, dtype),
                                                static_cast<trident::ReduceOp>(op),
                                                trident::Options(timeout_ms)),
                          work);
  });
}

int trident_reduce_scatter(trident_comm* comm, const void* in, void* out, size_t count,
                           int dtype, int op, int64_t timeout_ms, trident_work** work) {
  return Guard("trident_reduce_scatter", [&] {
    TRIDENT_CHECK_OP("trident_reduce_scatter", comm, dtype, &op);
    const size_t n = count * static_cast<size_t>(comm->comm->size());
    return trident::Issue(comm->comm->ReduceScatter(trident::Flat(in, n, dtype),
                                                    trident::Flat(out, count, dtype),
                                                    static_cast<trident::ReduceOp>(op),
                                                    trident::Options(timeout_ms)),
                          work);
  });
}

int trident_allgather(trident_comm* comm, const void* in, void* out, size_t count, int dtype,
                      int64_t timeout_ms, trident_work** work) {
  return Guard("trident_allgather", [&] {
    TRIDENT_CHECK_OP("trident_allgather", comm, dtype, nullptr);
    const size_t n = count * static_cast<size_t>(comm->comm->size());
    return trident::Issue(comm->comm->AllGather(trident::Flat(in, count, dtype),
                                                trident::Flat(out, n, dtype),
                                                trident::Options(timeout_ms)),
                          work);
  });
}

int trident_broadcast(trident_comm* comm, void* buffer, size_t count, int dtype, int root,
                      int64_t timeout_ms, trident_work** work) {
  return Guard("trident_broadcast", [&] {
    TRIDENT_CHECK_OP("trident_broadcast", comm, dtype, nullptr);
    return trident::Issue(comm->comm->Broadcast(trident::Flat(buffer, count, dtype), root,
                                                trident::Options(timeout_ms)),
                          work);
  });
}

int trident_reduce(trident_comm* comm, const void* in, void* out, size_t count, int dtype,
                   int op, int root, int64_t timeout_ms, trident_work** work) {
  return Guard("trident_reduce", [&] {
    TRIDENT_CHECK_OP("trident_reduce", comm, dtype, &op);
    return trident::Issue(comm->comm->Reduce(trident::Flat(in, count, dtype),
                                             trident::Flat(out, count, dtype),
                                             static_cast<trident::ReduceOp>(op), root,
                                             trident::Options(timeout_ms)),
                          work);
  });
}

int trident_alltoall(trident_comm* comm, const void* in, void* out, size_t count, int dtype,
                     int64_t timeout_ms, trident_work** work) {
  return Guard("trident_alltoall", [&] {
    TRIDENT_CHECK_OP("trident_alltoall", comm, dtype, nullptr);
    const size_t n = count * static_cast<size_t>(comm->comm->size());
    return trident::Issue(comm->comm->AllToAll(trident::Flat(in, n, dtype),
                                               trident::Flat(out, n, dtype),
                                               trident::Options(timeout_ms)),
                          work);
  });
}

int trident_barrier(trident_comm* comm, int64_t timeout_ms, trident_work** work) {
  return Guard("trident_barrier", [&] {
    TRIDENT_CHECK_OP("trident_barrier", comm, TRIDENT_DTYPE_U8, nullptr);
    return trident::Issue(comm->comm->Barrier(trident::Options(timeout_ms)), work);
  });
}

int trident_send(trident_comm* comm, const void* buffer, size_t count, int dtype, int peer,
                 int tag, int64_t timeout_ms, trident_work** work) {
  return Guard("trident_send", [&] {
    TRIDENT_CHECK_OP("trident_send", comm, dtype, nullptr);
    return trident::Issue(comm->comm->Send(trident::Flat(buffer, count, dtype), peer, tag,
                                           trident::Options(timeout_ms)),
                          work);
  });
}

int trident_recv(trident_comm* comm, void* buffer, size_t count, int dtype, int peer, int tag,
                 int64_t timeout_ms, trident_work** work) {
  return Guard("trident_recv", [&] {
    TRIDENT_CHECK_OP("trident_recv", comm, dtype, nullptr);
    return trident::Issue(comm->comm->Recv(trident::Flat(buffer, count, dtype), peer, tag,
                                           trident::Options(timeout_ms)),
                          work);
  });
}

int trident_work_wait(trident_work* work, int64_t timeout_ms) {
  return Guard("trident_work_wait", [&] {
    if (work == nullptr || work->work == nullptr) return Invalid("trident_work_wait: work is NULL");
    return Fail(work->work->Wait(trident::DeadlineAfterMs(timeout_ms)));
  });
}

int trident_work_test(const trident_work* work) {
  return Guard("trident_work_test", [&] {
    if (work == nullptr || work->work == nullptr) return Invalid("trident_work_test: work is NULL");
    return Fail(work->work->status());
  });
}

void trident_work_free(trident_work* work) { delete work; }

// --- Checkpoints ------------------------------------------------------------------------------

void trident_ckpt_options_init(trident_ckpt_options* options) {
  if (options == nullptr) return;
  *options = trident_ckpt_options{};
  options->struct_size = sizeof(trident_ckpt_options);
  options->peer_replicas = 1;
  options->direct_io = 1;
}

int trident_ckpt_create(trident_comm* comm, const trident_ckpt_options* options,
                        trident_ckpt** out) {
  return Guard("trident_ckpt_create", [&] {
    if (out == nullptr) return Invalid("trident_ckpt_create: out is NULL");
    *out = nullptr;
    if (comm == nullptr || comm->comm == nullptr) return Invalid("trident_ckpt_create: comm is NULL");
    if (options == nullptr || options->dir == nullptr || options->dir[0] == '\0') {
      return Invalid("trident_ckpt_create: options->dir is not set");
    }
    if (options->struct_size < offsetof(trident_ckpt_options, commit_timeout_ms) +
                                   sizeof(options->commit_timeout_ms)) {
      return Invalid(absl::StrCat("trident_ckpt_create: options->struct_size ",
                                  options->struct_size,
                                  " is too small: initialise with trident_ckpt_options_init"));
    }
    trident::CheckpointOptions o;
    o.dir = options->dir;
    // The runtime's world is borrowed: the engine then must not outlive the runtime.
    o.comm = comm->comm;
    o.memory_budget_bytes = options->memory_budget_bytes;
    o.keep_last = options->keep_last;
    o.peer_replicas = options->peer_replicas != 0;
    o.direct_io = options->direct_io != 0;
    if (options->commit_timeout_ms > 0) {
      o.commit_timeout = absl::Milliseconds(options->commit_timeout_ms);
    }
    absl::StatusOr<std::unique_ptr<trident::CheckpointEngine>> engine =
        trident::CheckpointEngine::Create(std::move(o));
    if (!engine.ok()) return Fail(engine.status());
    *out = new trident_ckpt{*std::move(engine)};
    return TRIDENT_OK;
  });
}

int trident_ckpt_save(trident_ckpt* ckpt, int64_t step, const trident_buffer* buffers,
                      size_t count, const void* metadata, size_t metadata_len,
                      trident_save** save) {
  return Guard("trident_ckpt_save", [&] {
    if (save != nullptr) *save = nullptr;
    if (ckpt == nullptr) return Invalid("trident_ckpt_save: ckpt is NULL");
    if (std::string bad = trident::CheckBuffers("trident_ckpt_save", buffers, count);
        !bad.empty()) {
      return Invalid(bad);
    }
    trident::CheckpointState state = trident::StateOf(buffers, count);
    if (metadata != nullptr) state.metadata.assign(static_cast<const char*>(metadata), metadata_len);
    absl::StatusOr<std::shared_ptr<trident::CheckpointSave>> s = ckpt->engine->Save(step, state);
    if (!s.ok()) return Fail(s.status());
    if (save != nullptr) *save = new trident_save{*std::move(s)};
    return TRIDENT_OK;
  });
}

int trident_ckpt_save_wait(trident_save* save, int64_t timeout_ms) {
  return Guard("trident_ckpt_save_wait", [&] {
    if (save == nullptr || save->save == nullptr) return Invalid("trident_ckpt_save_wait: save is NULL");
    return Fail(save->save->Wait(trident::DeadlineAfterMs(timeout_ms)));
  });
}

void trident_ckpt_save_free(trident_save* save) { delete save; }

void trident_ckpt_destroy(trident_ckpt* ckpt) { delete ckpt; }

int trident_ckpt_load(const char* dir, int64_t step, const trident_buffer* buffers,
                      size_t count, int64_t* loaded_step) {
  return Guard("trident_ckpt_load", [&] {
    if (dir == nullptr || dir[0] == '\0') return Invalid("trident_ckpt_load: dir is not set");
    if (std::string bad = trident::CheckBuffers("trident_ckpt_load", buffers, count);
        !bad.empty()) {
      return Invalid(bad);
    }
    std::vector<trident::TensorRequest> requests = trident::RequestsOf(buffers, count);
    absl::StatusOr<trident::LoadResult> loaded = trident::LoadCheckpoint(
        dir, step < 0 ? trident::kLatestStep : step, requests);
    if (!loaded.ok()) return Fail(loaded.status());
    if (loaded_step != nullptr) *loaded_step = loaded->step;
    return TRIDENT_OK;
  });
}

// --- Runtime ----------------------------------------------------------------------------------

int trident_runtime_init(trident_runtime** out) {
  return Guard("trident_runtime_init", [&] {
    if (out == nullptr) return Invalid("trident_runtime_init: out is NULL");
    *out = nullptr;
    absl::StatusOr<std::unique_ptr<trident::Runtime>> rt = trident::Runtime::Init({});
    if (!rt.ok()) return Fail(rt.status());
    *out = new trident_runtime{*std::move(rt)};
    return TRIDENT_OK;
  });
}

trident_comm* trident_runtime_world(trident_runtime* runtime) {
  if (runtime == nullptr) return nullptr;
  runtime->world.comm = std::shared_ptr<trident::Communicator>(
      std::shared_ptr<trident::Communicator>(), &runtime->runtime->world());
  return &runtime->world;
}

int trident_runtime_rank(const trident_runtime* runtime) {
  return runtime != nullptr ? runtime->runtime->rank() : -1;
}
int trident_runtime_world_size(const trident_runtime* runtime) {
  return runtime != nullptr ? runtime->runtime->world_size() : -1;
}
int64_t trident_runtime_epoch(const trident_runtime* runtime) {
  return runtime != nullptr ? runtime->runtime->epoch() : -1;
}
int trident_runtime_promoted(const trident_runtime* runtime) {
  return runtime != nullptr && runtime->runtime->promoted() ? 1 : 0;
}

int trident_runtime_recover(trident_runtime* runtime, int cause_code, const char* cause_message,
                            int64_t timeout_ms, trident_recovery* recovery) {
  return Guard("trident_runtime_recover", [&] {
    if (runtime == nullptr) return Invalid("trident_runtime_recover: runtime is NULL");
    if (cause_code == TRIDENT_OK) {
      return Invalid("trident_runtime_recover: cause_code is TRIDENT_OK; pass the failed op's code");
    }
    absl::StatusOr<trident::Recovery> r = runtime->runtime->Recover(
        trident::StatusOf(cause_code, cause_message ? cause_message : ""),
        trident::DeadlineAfterMs(timeout_ms));
    if (!r.ok()) return Fail(r.status());
    if (recovery != nullptr) *recovery = trident::RecoveryOf(*r);
    return TRIDENT_OK;
  });
}

void trident_runtime_progress(trident_runtime* runtime) {
  if (runtime != nullptr) runtime->runtime->Progress();
}
void trident_runtime_finish(trident_runtime* runtime) {
  if (runtime != nullptr) runtime->runtime->Finish();
}
void trident_runtime_destroy(trident_runtime* runtime) { delete runtime; }

void trident_loop_options_init(trident_loop_options* options) {
  if (options == nullptr) return;
  *options = trident_loop_options{};
  options->struct_size = sizeof(trident_loop_options);
  options->keep = 3;
  options->peer_replicas = 1;
  options->recover_timeout_ms = 60000;
}

int trident_run_resilient(trident_runtime* runtime, const trident_trainable* trainer,
                          const trident_loop_options* options) {
  return Guard("trident_run_resilient", [&] {
    if (runtime == nullptr) return Invalid("trident_run_resilient: runtime is NULL");
    if (trainer == nullptr || trainer->struct_size < sizeof(trident_trainable) ||
        trainer->step == nullptr || trainer->current_step == nullptr ||
        trainer->state == nullptr) {
      return Invalid(
          "trident_run_resilient: trainer is NULL, its struct_size is not "
          "sizeof(trident_trainable), or step, current_step or state is NULL");
    }
    if (options == nullptr || options->struct_size < sizeof(trident_loop_options)) {
      return Invalid(
          "trident_run_resilient: options is NULL or not initialised with "
          "trident_loop_options_init");
    }
    trident::LoopOptions loop;
    loop.steps = options->steps;
    if (options->ckpt_dir != nullptr) loop.ckpt_dir = options->ckpt_dir;
    loop.ckpt_every = options->ckpt_every;
    loop.keep = options->keep;
    loop.peer_replicas = options->peer_replicas != 0;
    loop.resume = options->resume != 0;
    loop.recover_timeout = absl::Milliseconds(options->recover_timeout_ms);
    if (options->on_recovery != nullptr) {
      auto on_recovery = options->on_recovery;
      void* user = options->user;
      loop.on_recovery = [on_recovery, user](const trident::RecoveryReport& r) {
        trident_recovery c{};
        c.old_epoch = -1;  // a report has the epoch, the world and the dead rank only
        c.epoch = r.epoch;
        c.world_size = r.world_size;
        c.failed_rank = r.failed.rank;
        on_recovery(user, &c, r.resume_step, r.source.c_str());
      };
    }
    trident::CTrainable adapter(*trainer);
    return Fail(trident::RunResilient(*runtime->runtime, adapter, loop));
  });
}

}  // extern "C"
