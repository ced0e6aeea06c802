/* trident/c_api.h: Trident's stable C ABI, for C programs and for foreign-function
 * interfaces (Python ctypes/cffi, Rust, Julia, Go) that cannot use the C++ headers.
 * It lives in libtrident.so (pkg-config trident; CMake trident::trident_shared).
 *
 * Contents: communicators (create from the TRIDENT_* environment or from options, every
 * collective and point-to-point op, asynchronous handles with a deadline, split, abort), the
 * checkpoint engine (save and restore named buffers) and the runtime (init under trident-run,
 * hot spares, recovery, and the resilient step loop driven by C callbacks). docs/c_api.md has
 * a complete example.
 *
 * Conventions:
 *  - Objects are opaque handles, created by trident_*_create (or _init) and released by the
 *    matching trident_*_destroy / _free, which accept NULL.
 *  - Every fallible call returns an int: TRIDENT_OK (0) or an error code below. The message of
 *    the last failed call on the calling thread is trident_last_error() (thread-local; it says
 *    what happened, where, and what to do). A successful call leaves it as it was.
 *  - Buffers are plain host memory, contiguous, described by a pointer, an element count and
 *    a TRIDENT_DTYPE_*. The caller keeps them alive and unchanged until the op completes
 *    (its trident_work completes). The checkpoint engine copies a state before its save
 *    call returns.
 *  - Every blocking call has a deadline: an op's timeout_ms (0: the communicator's default,
 *    TRIDENT_TIMEOUT_MS), or a wait's timeout_ms (negative: no limit of the caller's own;
 *    the op is still bound by its own deadline).
 *  - Thread-safety: as the C++ API. A communicator's ops may be issued and abort called from
 *    any thread; every rank issues the same collectives in the same order.
 *  - ABI: functions are only ever added; option structs only grow at the end and carry their
 *    size (struct_size), so initialise them with the matching trident_*_options_init(), which
 *    sets the defaults. TRIDENT_C_API_VERSION grows with each addition.
 *
 * The header is C89/C99 (and C++) clean and uses no C++ type.
 */
#ifndef TRIDENT_C_API_H_
#define TRIDENT_C_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TRIDENT_C_API_VERSION 1

/* --- Errors ---------------------------------------------------------------------------------
 * The codes are the canonical status codes (as absl::StatusCode and gRPC), chosen by what the
 * caller does next:
 *   fix the call:        TRIDENT_INVALID_ARGUMENT (nothing happened), TRIDENT_NOT_FOUND,
 *                        TRIDENT_ALREADY_EXISTS, TRIDENT_OUT_OF_RANGE, TRIDENT_UNIMPLEMENTED
 *   recover (rebuild the communicator; under trident-run: trident_runtime_recover):
 *                        TRIDENT_ABORTED (a peer failed or the communicator was aborted; the
 *                        message names the rank and the cause), TRIDENT_DEADLINE_EXCEEDED
 *                        (the message names the ranks that had not arrived),
 *                        TRIDENT_FAILED_PRECONDITION (the object was aborted before the call)
 *   retry later:         TRIDENT_UNAVAILABLE (an op still running; a store briefly away),
 *                        TRIDENT_RESOURCE_EXHAUSTED (disk or memory full)
 *   stop, successfully:  TRIDENT_CANCELLED (a spare that the job did not need: exit 0)
 *   give up, report:     TRIDENT_DATA_LOSS (a corrupt checkpoint: names the file),
 *                        TRIDENT_INTERNAL, TRIDENT_UNKNOWN, TRIDENT_PERMISSION_DENIED,
 *                        TRIDENT_UNAUTHENTICATED
 */
#define TRIDENT_OK 0
#define TRIDENT_CANCELLED 1
#define TRIDENT_UNKNOWN 2
#define TRIDENT_INVALID_ARGUMENT 3
#define TRIDENT_DEADLINE_EXCEEDED 4
#define TRIDENT_NOT_FOUND 5
#define TRIDENT_ALREADY_EXISTS 6
#define TRIDENT_PERMISSION_DENIED 7
#define TRIDENT_RESOURCE_EXHAUSTED 8
#define TRIDENT_FAILED_PRECONDITION 9
#define TRIDENT_ABORTED 10
#define TRIDENT_OUT_OF_RANGE 11
#define TRIDENT_UNIMPLEMENTED 12
#define TRIDENT_INTERNAL 13
#define TRIDENT_UNAVAILABLE 14
#define TRIDENT_DATA_LOSS 15
#define TRIDENT_UNAUTHENTICATED 16

/* The message of the last call that failed on this thread ("" if none): the code's name and
 * what happened ("ABORTED: allreduce on world: rank 2 died ..."). Valid until the next failing
 * call on this thread. */
const char* trident_last_error(void);
/* The code of the last call that failed on this thread (TRIDENT_OK if none). */
int trident_last_error_code(void);
/* Sets this thread's last error: for callbacks (trident_trainable) that return an error code
 * and want their own message to travel with it. */
void trident_set_last_error(int code, const char* message);
/* "OK", "ABORTED", ...; "UNKNOWN_CODE" for a number that is not a code. */
const char* trident_code_name(int code);
/* Whether a new epoch can cure an error with this code and message (a peer died or hung, the
 * communicator was aborted, the store was briefly away), as the resilient loop decides. */
int trident_is_recoverable(int code, const char* message);

/* "0.1.0" and TRIDENT_VERSION_CODE (major*10000 + minor*100 + patch) of the library loaded. */
const char* trident_version(void);
int trident_version_code(void);

/* --- Element types and reductions (the numbering is fixed) --------------------------------- */
#define TRIDENT_DTYPE_F32 0
#define TRIDENT_DTYPE_F64 1
#define TRIDENT_DTYPE_F16 2
#define TRIDENT_DTYPE_BF16 3
#define TRIDENT_DTYPE_I8 4
#define TRIDENT_DTYPE_U8 5
#define TRIDENT_DTYPE_I32 6
#define TRIDENT_DTYPE_I64 7

#define TRIDENT_SUM 0
#define TRIDENT_PROD 1
#define TRIDENT_MIN 2
#define TRIDENT_MAX 3
#define TRIDENT_AVG 4

/* Bytes of one element of `dtype`; 0 for a number that is not a dtype. */
size_t trident_dtype_size(int dtype);

/* --- Communicators ------------------------------------------------------------------------- */
typedef struct trident_comm trident_comm;
typedef struct trident_work trident_work;

typedef struct trident_comm_options {
  size_t struct_size; /* sizeof(trident_comm_options); set by trident_comm_options_init */
  /* Rank and world size; -1 reads TRIDENT_RANK / TRIDENT_WORLD_SIZE (and RANK, SLURM_PROCID,
   * ... when those are absent: docs/c_api.md, "Launch"). */
  int rank;
  int world_size;
  /* Where ranks meet: "tcp://host:port", "file:///dir", or "memory" (a world of one rank in
   * this process); NULL or "" reads TRIDENT_STORE (set by trident-run), and a world of one
   * without TRIDENT_STORE meets in memory. */
  const char* store;
  /* libfabric provider ("shm", "tcp", ...); NULL or "": TRIDENT_FABRIC_PROVIDER. */
  const char* provider;
  /* Default deadline of each op, in ms; 0: TRIDENT_TIMEOUT_MS. */
  int64_t timeout_ms;
  /* Shown in logs and errors; NULL: "world". */
  const char* name;
} trident_comm_options;

void trident_comm_options_init(trident_comm_options* options);

/* Builds the world communicator of the host backend. Every rank calls it; it returns once all
 * ranks have met (or fails at the timeout). options NULL: everything from the environment, as
 * under trident-run. */
int trident_comm_create(const trident_comm_options* options, trident_comm** out);
/* Makes a sub-communicator of the ranks that pass the same color, ordered by (key, rank).
 * Collective: every rank calls it. A negative color takes no part: *out is set to NULL. */
int trident_comm_split(trident_comm* comm, int color, int key, trident_comm** out);
int trident_comm_rank(const trident_comm* comm);
int trident_comm_size(const trident_comm* comm);
/* Fails every pending op (TRIDENT_ABORTED with `reason`) and every later one
 * (TRIDENT_FAILED_PRECONDITION). Any thread; returns promptly; the first reason wins. */
void trident_comm_abort(trident_comm* comm, const char* reason);
/* TRIDENT_OK while the communicator is usable, else its abort code (message: last error). */
int trident_comm_abort_status(const trident_comm* comm);
/* Releases the handle. A communicator shared with a checkpoint engine lives on until the
 * engine is destroyed too. */
void trident_comm_destroy(trident_comm* comm);

/* Ops. Each is asynchronous: with `work` non-NULL it returns at once and *work tracks the op
 * (free it with trident_work_free); with `work` NULL it waits for the op and returns its code.
 * timeout_ms: the op's deadline, counted from now; 0: the communicator's default. An
 * argument error is returned at once (*work is then NULL). `in` and `out` may be the same
 * buffer. Counts are elements of `dtype`. */

/* out[i] = op over ranks of in[i]; count elements each. */
int trident_allreduce(trident_comm* comm, const void* in, void* out, size_t count, int dtype,
                      int op, int64_t timeout_ms, trident_work** work);
/* in: size*count elements; rank r receives block r of the reduction in out (count elements). */
int trident_reduce_scatter(trident_comm* comm, const void* in, void* out, size_t count,
                           int dtype, int op, int64_t timeout_ms, trident_work** work);
/* in: count elements; out: size*count, block r coming from rank r. */
int trident_allgather(trident_comm* comm, const void* in, void* out, size_t count, int dtype,
                      int64_t timeout_ms, trident_work** work);
/* The root's buffer is copied into every rank's buffer. */
int trident_broadcast(trident_comm* comm, void* buffer, size_t count, int dtype, int root,
                      int64_t timeout_ms, trident_work** work);
/* The reduction lands in the root's out; out is not touched on other ranks. */
int trident_reduce(trident_comm* comm, const void* in, void* out, size_t count, int dtype,
                   int op, int root, int64_t timeout_ms, trident_work** work);
/* in and out: size*count elements; block j of rank i's in lands in block i of rank j's out. */
int trident_alltoall(trident_comm* comm, const void* in, void* out, size_t count, int dtype,
                     int64_t timeout_ms, trident_work** work);
int trident_barrier(trident_comm* comm, int64_t timeout_ms, trident_work** work);
/* A send matches the recv on `peer` with the same tag (0 <= tag < 2^24) and byte size. */
int trident_send(trident_comm* comm, const void* buffer, size_t count, int dtype, int peer,
                 int tag, int64_t timeout_ms, trident_work** work);
int trident_recv(trident_comm* comm, void* buffer, size_t count, int dtype, int peer, int tag,
                 int64_t timeout_ms, trident_work** work);

/* Waits until the op completes or timeout_ms passes (negative: no limit of the caller's own).
 * Returns the op's code, or TRIDENT_DEADLINE_EXCEEDED when the caller's timeout passed first
 * (the op goes on, bound by its own deadline). */
int trident_work_wait(trident_work* work, int64_t timeout_ms);
/* Does not block: TRIDENT_UNAVAILABLE while the op runs, else its code (sticky). */
int trident_work_test(const trident_work* work);
/* Releases the handle; the op itself goes on to its end, so its buffers must stay valid
 * until then (wait first). */
void trident_work_free(trident_work* work);

/* --- Checkpoints ----------------------------------------------------------------------------
 * One named buffer of a state, flattened to one dimension. A rank may hold a piece of a larger
 * tensor: global_count elements in all, this rank's piece starting at element `offset`
 * (global_count 0: the buffer is the whole tensor). Pieces held identically by several ranks
 * (data-parallel replicas) give replica_count > 1 and each its replica_index. */
typedef struct trident_buffer {
  const char* name; /* unique in a state; not starting with "__" */
  void* data;
  size_t count;
  int dtype;
  size_t global_count;
  size_t offset;
  int replica_index;
  int replica_count; /* 0 or 1: one copy */
} trident_buffer;

typedef struct trident_ckpt trident_ckpt;
typedef struct trident_save trident_save;

typedef struct trident_ckpt_options {
  size_t struct_size; /* set by trident_ckpt_options_init */
  const char* dir;    /* shared by every rank; created if missing */
  size_t memory_budget_bytes; /* staging memory; 0: TRIDENT_CKPT_MEMORY_BUDGET_MB */
  int keep_last;      /* keep the newest N committed checkpoints; 0: all */
  int peer_replicas;  /* keep each rank's last snapshot in a buddy's memory (default 1) */
  int direct_io;      /* O_DIRECT where the file system allows it (default 1) */
  int64_t commit_timeout_ms; /* 0: the communicator's */
} trident_ckpt_options;

void trident_ckpt_options_init(trident_ckpt_options* options);
/* Collective over `comm`, which the engine shares from now on (it issues collectives on it
 * from a thread of its own): give it a communicator of its own, e.g.
 * trident_comm_split(world, 0, rank, &ckpt_comm). */
int trident_ckpt_create(trident_comm* comm, const trident_ckpt_options* options,
                        trident_ckpt** out);
/* Snapshots the buffers for `step` and returns once they are copied (the buffers may change
 * again); writing and the commit go on in the background, tracked by *save (NULL: not
 * tracked). Every rank of the engine's communicator calls it for the same steps, in order.
 * metadata: up to 1 MiB of per-rank bytes (RNG state, ...), may be NULL. */
int trident_ckpt_save(trident_ckpt* ckpt, int64_t step, const trident_buffer* buffers,
                      size_t count, const void* metadata, size_t metadata_len,
                      trident_save** save);
/* Waits until the save is committed (TRIDENT_OK) or failed, or timeout_ms passes (negative:
 * no limit; TRIDENT_DEADLINE_EXCEEDED, the save goes on). */
int trident_ckpt_save_wait(trident_save* save, int64_t timeout_ms);
void trident_ckpt_save_free(trident_save* save);
/* Waits for the save in flight, stops the threads, releases the communicator. */
void trident_ckpt_destroy(trident_ckpt* ckpt);

/* Fills each buffer (its piece: offset, count) from checkpoint `step` of `dir` (-1: the
 * latest committed). Any layout loads: a piece is read from whatever shards overlap it.
 * *loaded_step (may be NULL) is the step loaded. TRIDENT_NOT_FOUND (no checkpoint, no such
 * name), TRIDENT_INVALID_ARGUMENT (dtype or size mismatch), TRIDENT_DATA_LOSS (checksum). */
int trident_ckpt_load(const char* dir, int64_t step, const trident_buffer* buffers,
                      size_t count, int64_t* loaded_step);

/* --- Runtime: the process's place in a fault-tolerant job ----------------------------------
 * Under `trident-run [--spares S]` every process calls trident_runtime_init: workers get the
 * current epoch's world; spares wait, connected, until promoted to replace a dead rank
 * (TRIDENT_CANCELLED when the job ended without needing them: exit 0). Alone (no
 * trident-run): a world of one rank. */
typedef struct trident_runtime trident_runtime;

int trident_runtime_init(trident_runtime** out);
/* The current epoch's world, owned by the runtime: valid until the next recover. */
trident_comm* trident_runtime_world(trident_runtime* runtime);
int trident_runtime_rank(const trident_runtime* runtime);
int trident_runtime_world_size(const trident_runtime* runtime);
int64_t trident_runtime_epoch(const trident_runtime* runtime);
/* 1 when this process started as a spare and holds a dead rank's slot (restore its state). */
int trident_runtime_promoted(const trident_runtime* runtime);

typedef struct trident_recovery {
  int64_t old_epoch;
  int64_t epoch;
  int world_size;
  int failed_rank;     /* the (first) rank replaced; -1 if none */
  int rejoined;        /* this process came back from the spare pool */
  int64_t wait_ms;
  int64_t rebuild_ms;
} trident_recovery;

/* After an op failed with (cause_code, cause_message): aborts the world, waits up to
 * timeout_ms (negative: no limit) for the launcher's next epoch and builds its world.
 * TRIDENT_ABORTED: the job is ending (no spare left); TRIDENT_DEADLINE_EXCEEDED: no new
 * epoch came (the cause was not a death: treat it as fatal); TRIDENT_CANCELLED: this process
 * is not needed any more (exit 0). *recovery may be NULL. */
int trident_runtime_recover(trident_runtime* runtime, int cause_code, const char* cause_message,
                            int64_t timeout_ms, trident_recovery* recovery);
/* The training thread made progress (once per step): arms the hang check. Any thread. */
void trident_runtime_progress(trident_runtime* runtime);
/* This rank is done: stops the heartbeat and the watcher; the world stays usable. */
void trident_runtime_finish(trident_runtime* runtime);
void trident_runtime_destroy(trident_runtime* runtime);

/* The resilient step loop (trident/resilient.h) with a trainer made of C callbacks. Each
 * callback returns TRIDENT_OK or an error code (trident_set_last_error adds a message); all
 * are called on the thread that called trident_run_resilient. Step must be a deterministic
 * function of the state and the step number, so that a restored rank computes what an
 * unbroken run would. */
typedef struct trident_trainable {
  size_t struct_size; /* sizeof(trident_trainable) */
  void* user;         /* passed to every callback */
  /* (Re)binds to the world: at the start and after each recovery (world: valid until the next
   * bind). fresh: this process's state is not the job's (a promoted spare); it is restored
   * next. May be NULL. */
  int (*bind)(void* user, trident_comm* world, int64_t epoch, int fresh);
  /* Runs step current_step + 1. Collective. */
  int (*step)(void* user);
  /* Completed steps. */
  int64_t (*current_step)(void* user);
  /* The state: buffers to checkpoint and to restore into (valid until the next step). */
  int (*state)(void* user, const trident_buffer** buffers, size_t* count);
  /* The buffers were filled with the state of `step`. */
  void (*set_restored_step)(void* user, int64_t step);
  /* Back to the state of step 0. */
  void (*reset)(void* user);
} trident_trainable;

typedef struct trident_loop_options {
  size_t struct_size; /* set by trident_loop_options_init */
  int64_t steps;      /* train until current_step == steps */
  const char* ckpt_dir; /* NULL or "": no checkpoints */
  int ckpt_every;
  int keep;           /* default 3 */
  int peer_replicas;  /* default 1 */
  int resume;         /* start from the newest checkpoint that loads */
  int64_t recover_timeout_ms; /* default 60000 */
  /* Called on every rank after each recovery (recovery: epoch, world_size and failed_rank;
   * old_epoch -1); may be NULL. */
  void (*on_recovery)(void* user, const trident_recovery* recovery, int64_t resume_step,
                      const char* source);
  void* user;
} trident_loop_options;

void trident_loop_options_init(trident_loop_options* options);
/* Runs the trainer to options->steps through failures. TRIDENT_OK when every step ran;
 * TRIDENT_CANCELLED when this process was not needed (exit 0); otherwise the error no
 * recovery could cure (message: the rank and what was tried). */
int trident_run_resilient(trident_runtime* runtime, const trident_trainable* trainer,
                          const trident_loop_options* options);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TRIDENT_C_API_H_ */
