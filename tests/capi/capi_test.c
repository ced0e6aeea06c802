/* The C API (trident/c_api.h) driven from C (compiled as C99, linked against libtrident.so).
 *
 *   capi_test single           one process: errors, a world of one, split, abort, checkpoints
 *   capi_test multi <dir>      under trident-run (2-4 ranks): every op checked against its
 *                              expected values, a checkpoint saved by every rank and loaded
 *                              back resharded, async handles
 *   capi_test deadline         under trident-run with 3 ranks: rank 2 skips an allreduce;
 *                              the others fail at its deadline, with a message that names
 *                              rank 2
 *   capi_test resilient <dir>  under trident-run: trident_run_resilient with C callbacks
 *   capi_test recover <dir>    the same under trident-run --spares 1, where rank 1 kills
 *                              itself (SIGKILL) before step 4 of epoch 1: the spare takes
 *                              its place, restores, and every rank ends with the values of
 *                              an unbroken run
 *
 * Each check prints what failed and exits 1. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp, setenv under -std=c99 */

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trident/c_api.h"

static int failures = 0;

#define CHECK(cond)                                                                     \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      fprintf(stderr, "capi_test:%d: CHECK(%s) failed; last error: %s\n", __LINE__, #cond, \
              trident_last_error());                                                    \
      failures++;                                                                       \
    }                                                                                   \
  } while (0)

/* A call that must succeed. */
#define OK(call)                                                                          \
  do {                                                                                    \
    int rc_ = (call);                                                                     \
    if (rc_ != TRIDENT_OK) {                                                              \
      fprintf(stderr, "capi_test:%d: %s returned %s: %s\n", __LINE__, #call,              \
              trident_code_name(rc_), trident_last_error());                              \
      exit(1);                                                                            \
    }                                                                                     \
  } while (0)

static int Contains(const char* s, const char* what) { return s != NULL && strstr(s, what) != NULL; }

/* --- single --------------------------------------------------------------------------------- */

static void ErrorPaths(void) {
  trident_comm* comm = (trident_comm*)1;
  trident_comm_options options;
  float x = 1;
  trident_work* work = (trident_work*)1;

  /* Nothing failed yet on this thread. */
  CHECK(trident_last_error_code() == TRIDENT_OK);
  CHECK(strcmp(trident_last_error(), "") == 0);

  /* A NULL communicator: the code says "fix the call", the message says which argument. */
  CHECK(trident_allreduce(NULL, &x, &x, 1, TRIDENT_DTYPE_F32, TRIDENT_SUM, 0, &work) ==
        TRIDENT_INVALID_ARGUMENT);
  CHECK(work == NULL);
  CHECK(trident_last_error_code() == TRIDENT_INVALID_ARGUMENT);
  CHECK(Contains(trident_last_error(), "INVALID_ARGUMENT: trident_allreduce: comm is NULL"));

  /* A bad rank and world size: nothing is created. */
  trident_comm_options_init(&options);
  CHECK(options.struct_size == sizeof(options));
  options.rank = 3;
  options.world_size = 2;
  options.store = "memory";
  CHECK(trident_comm_create(&options, &comm) == TRIDENT_INVALID_ARGUMENT);
  CHECK(comm == NULL);
  CHECK(Contains(trident_last_error(), "rank 3 and world size 2 are not valid"));

  /* A malformed setting is an error from the call that reads it, not an abort. */
  setenv("TRIDENT_TIMEOUT_MS", "30s", 1);
  options.rank = 0;
  options.world_size = 1;
  CHECK(trident_comm_create(&options, &comm) == TRIDENT_INVALID_ARGUMENT);
  CHECK(Contains(trident_last_error(), "TRIDENT_TIMEOUT_MS='30s' is not valid: expected a whole "
                                       "number of milliseconds"));
  unsetenv("TRIDENT_TIMEOUT_MS");

  /* An options struct from an older, smaller layout that was never initialised. */
  options.struct_size = 4;
  CHECK(trident_comm_create(&options, &comm) == TRIDENT_INVALID_ARGUMENT);
  CHECK(Contains(trident_last_error(), "initialise with trident_comm_options_init"));

  /* A callback's own error travels with its code. */
  trident_set_last_error(TRIDENT_DATA_LOSS, "my data is gone");
  CHECK(trident_last_error_code() == TRIDENT_DATA_LOSS);
  CHECK(strcmp(trident_last_error(), "DATA_LOSS: my data is gone") == 0);

  CHECK(strcmp(trident_code_name(TRIDENT_ABORTED), "ABORTED") == 0);
  CHECK(strcmp(trident_code_name(99), "UNKNOWN_CODE") == 0);
  CHECK(trident_is_recoverable(TRIDENT_ABORTED, "rank 1 died") == 1);
  CHECK(trident_is_recoverable(TRIDENT_INVALID_ARGUMENT, "bad count") == 0);
  CHECK(trident_dtype_size(TRIDENT_DTYPE_BF16) == 2);
  CHECK(trident_dtype_size(42) == 0);
  CHECK(trident_version_code() >= 100);
  CHECK(strlen(trident_version()) >= 5);
}

static void WorldOfOne(const char* dir) {
  trident_comm_options options;
  trident_comm* world = NULL;
  trident_comm* sub = NULL;
  trident_comm* none = (trident_comm*)1;
  trident_work* work = NULL;
  double v[4] = {1, 2, 3, 4};
  double out[4] = {0, 0, 0, 0};
  int i;

  trident_comm_options_init(&options);
  options.rank = 0;
  options.world_size = 1;
  options.store = "memory";
  options.provider = "shm";
  options.name = "capi";
  OK(trident_comm_create(&options, &world));
  CHECK(trident_comm_rank(world) == 0 && trident_comm_size(world) == 1);

  OK(trident_allreduce(world, v, out, 4, TRIDENT_DTYPE_F64, TRIDENT_MAX, 0, &work));
  CHECK(work != NULL);
  OK(trident_work_wait(work, 10000));
  CHECK(trident_work_test(work) == TRIDENT_OK);
  trident_work_free(work);
  for (i = 0; i < 4; i++) CHECK(out[i] == v[i]);

  /* A bad dtype or reduction: nothing is issued. */
  CHECK(trident_allreduce(world, v, out, 4, 17, TRIDENT_SUM, 0, NULL) == TRIDENT_INVALID_ARGUMENT);
  CHECK(Contains(trident_last_error(), "dtype 17 is not a TRIDENT_DTYPE_*"));
  CHECK(trident_allreduce(world, v, out, 4, TRIDENT_DTYPE_F64, 9, 0, NULL) ==
        TRIDENT_INVALID_ARGUMENT);
  CHECK(Contains(trident_last_error(), "reduction 9"));

  /* Split: color -1 takes no part. */
  OK(trident_comm_split(world, -1, 0, &none));
  CHECK(none == NULL);
  OK(trident_comm_split(world, 0, 0, &sub));
  CHECK(sub != NULL && trident_comm_size(sub) == 1);

  /* A checkpoint through the sub-communicator, loaded back. */
  {
    trident_ckpt_options copt;
    trident_ckpt* ckpt = NULL;
    trident_save* save = NULL;
    trident_buffer buf;
    double back[4] = {0, 0, 0, 0};
    int64_t loaded = 0;
    const char meta[] = "rng=7";
    trident_ckpt_options_init(&copt);
    copt.dir = dir;
    copt.memory_budget_bytes = (size_t)16 << 20;
    OK(trident_ckpt_create(sub, &copt, &ckpt));
    memset(&buf, 0, sizeof(buf));
    buf.name = "v";
    buf.data = v;
    buf.count = 4;
    buf.dtype = TRIDENT_DTYPE_F64;
    OK(trident_ckpt_save(ckpt, 5, &buf, 1, meta, sizeof(meta), &save));
    OK(trident_ckpt_save_wait(save, 60000));
    trident_ckpt_save_free(save);
    /* A buffer without a name: kInvalidArgument, nothing saved. */
    buf.name = NULL;
    CHECK(trident_ckpt_save(ckpt, 6, &buf, 1, NULL, 0, NULL) == TRIDENT_INVALID_ARGUMENT);
    CHECK(Contains(trident_last_error(), "buffer 0 has no name"));
    trident_ckpt_destroy(ckpt);

    buf.name = "v";
    buf.data = back;
    OK(trident_ckpt_load(dir, -1, &buf, 1, &loaded));
    CHECK(loaded == 5);
    for (i = 0; i < 4; i++) CHECK(back[i] == v[i]);
    buf.name = "w";
    CHECK(trident_ckpt_load(dir, -1, &buf, 1, NULL) == TRIDENT_NOT_FOUND);
    CHECK(Contains(trident_last_error(), "tensor w is not in checkpoint step 5"));
  }

  /* Abort: pending and later ops fail, with the reason. */
  trident_comm_abort(world, "test says stop");
  CHECK(trident_comm_abort_status(world) == TRIDENT_ABORTED);
  CHECK(Contains(trident_last_error(), "test says stop"));
  CHECK(trident_barrier(world, 0, &work) == TRIDENT_FAILED_PRECONDITION);
  CHECK(work == NULL);
  trident_comm_destroy(sub);
  trident_comm_destroy(world);
  trident_comm_destroy(NULL);
}

/* --- multi: every op, checked --------------------------------------------------------------- */

static void Multi(const char* dir) {
  trident_comm* world = NULL;
  int rank, size, i, r;
  enum { N = 6 };
  float in[4 * N], out[4 * N];
  int64_t big[4 * N], scattered[N];
  trident_work* works[2];

  OK(trident_comm_create(NULL, &world)); /* from trident-run's environment */
  rank = trident_comm_rank(world);
  size = trident_comm_size(world);
  CHECK(size >= 2 && size <= 4);

  /* allreduce, async: sum of (rank + 1) * (i + 1). */
  for (i = 0; i < N; i++) in[i] = (float)((rank + 1) * (i + 1));
  OK(trident_allreduce(world, in, out, N, TRIDENT_DTYPE_F32, TRIDENT_SUM, 0, &works[0]));
  OK(trident_work_wait(works[0], -1));
  trident_work_free(works[0]);
  for (i = 0; i < N; i++) CHECK(out[i] == (float)((i + 1) * size * (size + 1) / 2));

  /* allgather: block r is rank r's. */
  for (i = 0; i < N; i++) in[i] = (float)(rank * 100 + i);
  OK(trident_allgather(world, in, out, N, TRIDENT_DTYPE_F32, 0, NULL));
  for (r = 0; r < size; r++)
    for (i = 0; i < N; i++) CHECK(out[r * N + i] == (float)(r * 100 + i));

  /* reduce_scatter of int64 with max: block `rank` of max over ranks of (r * 10 + j). */
  for (i = 0; i < size * N; i++) big[i] = (int64_t)rank * 10 + i;
  OK(trident_reduce_scatter(world, big, scattered, N, TRIDENT_DTYPE_I64, TRIDENT_MAX, 0, NULL));
  for (i = 0; i < N; i++) CHECK(scattered[i] == (int64_t)(size - 1) * 10 + rank * N + i);

  /* broadcast from the last rank. */
  for (i = 0; i < N; i++) in[i] = rank == size - 1 ? (float)(7 * i) : -1.0f;
  OK(trident_broadcast(world, in, N, TRIDENT_DTYPE_F32, size - 1, 0, NULL));
  for (i = 0; i < N; i++) CHECK(in[i] == (float)(7 * i));

  /* reduce (min) to rank 0. */
  for (i = 0; i < N; i++) in[i] = (float)(rank + i);
  for (i = 0; i < N; i++) out[i] = -5;
  OK(trident_reduce(world, in, out, N, TRIDENT_DTYPE_F32, TRIDENT_MIN, 0, 0, NULL));
  for (i = 0; i < N; i++) CHECK(out[i] == (rank == 0 ? (float)i : -5.0f));

  /* alltoall: block j of rank i's in lands in block i of rank j's out. */
  for (r = 0; r < size; r++)
    for (i = 0; i < N; i++) in[r * N + i] = (float)(rank * 1000 + r * 10 + i);
  OK(trident_alltoall(world, in, out, N, TRIDENT_DTYPE_F32, 0, NULL));
  for (r = 0; r < size; r++)
    for (i = 0; i < N; i++) CHECK(out[r * N + i] == (float)(r * 1000 + rank * 10 + i));

  /* send/recv in a ring, both posted before either is waited for. */
  {
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    float token[N], got[N];
    for (i = 0; i < N; i++) token[i] = (float)(rank * 3 + i);
    OK(trident_send(world, token, N, TRIDENT_DTYPE_F32, next, 5, 0, &works[0]));
    OK(trident_recv(world, got, N, TRIDENT_DTYPE_F32, prev, 5, 0, &works[1]));
    OK(trident_work_wait(works[1], 30000));
    OK(trident_work_wait(works[0], 30000));
    trident_work_free(works[0]);
    trident_work_free(works[1]);
    for (i = 0; i < N; i++) CHECK(got[i] == (float)(prev * 3 + i));
  }

  /* A checkpoint: each rank saves its quarter of a global tensor; one rank's loader reads
   * the whole tensor back, resharded. */
  {
    trident_comm* ckpt_comm = NULL;
    trident_ckpt_options copt;
    trident_ckpt* ckpt = NULL;
    trident_save* save = NULL;
    trident_buffer piece;
    float mine[N];
    float whole[4 * N];
    OK(trident_comm_split(world, 0, rank, &ckpt_comm));
    trident_ckpt_options_init(&copt);
    copt.dir = dir;
    copt.memory_budget_bytes = (size_t)16 << 20;
    OK(trident_ckpt_create(ckpt_comm, &copt, &ckpt));
    for (i = 0; i < N; i++) mine[i] = (float)(rank * N + i);
    memset(&piece, 0, sizeof(piece));
    piece.name = "w";
    piece.data = mine;
    piece.count = N;
    piece.dtype = TRIDENT_DTYPE_F32;
    piece.global_count = (size_t)(size * N);
    piece.offset = (size_t)(rank * N);
    OK(trident_ckpt_save(ckpt, 1, &piece, 1, NULL, 0, &save));
    OK(trident_ckpt_save_wait(save, 60000));
    trident_ckpt_save_free(save);
    trident_ckpt_destroy(ckpt);
    trident_comm_destroy(ckpt_comm);
    memset(&piece, 0, sizeof(piece));
    piece.name = "w";
    piece.data = whole;
    piece.count = (size_t)(size * N);
    piece.dtype = TRIDENT_DTYPE_F32;
    OK(trident_ckpt_load(dir, 1, &piece, 1, NULL));
    for (i = 0; i < size * N; i++) CHECK(whole[i] == (float)i);
  }

  OK(trident_barrier(world, 0, NULL));
  trident_comm_destroy(world);
}

/* --- deadline: a rank that never arrives ---------------------------------------------------- */

static void Deadline(void) {
  trident_comm* world = NULL;
  trident_comm* side = NULL; /* rank 2 waits here, alive, until the others are done */
  float x[8] = {0};
  char done = 0;
  int rank, rc;
  OK(trident_comm_create(NULL, &world));
  OK(trident_comm_split(world, 0, 0, &side));
  rank = trident_comm_rank(world);
  CHECK(trident_comm_size(world) == 3);
  if (rank != 2) {
    rc = trident_allreduce(world, x, x, 8, TRIDENT_DTYPE_F32, TRIDENT_SUM, 500, NULL);
    CHECK(rc == TRIDENT_DEADLINE_EXCEEDED);
    CHECK(trident_last_error_code() == TRIDENT_DEADLINE_EXCEEDED);
    CHECK(Contains(trident_last_error(), "ranks that had not arrived: 2"));
    /* The communicator is aborted now: later ops are refused. */
    CHECK(trident_barrier(world, 0, NULL) == TRIDENT_FAILED_PRECONDITION);
    if (rank == 0) OK(trident_send(side, &done, 1, TRIDENT_DTYPE_U8, 2, 1, 30000, NULL));
  } else {
    /* Rank 2 skips the allreduce and waits for rank 0's word that the check is done. */
    OK(trident_recv(side, &done, 1, TRIDENT_DTYPE_U8, 0, 1, 30000, NULL));
  }
  trident_comm_destroy(side);
  trident_comm_destroy(world);
}

/* --- resilient: the step loop with C callbacks ---------------------------------------------- */

typedef struct {
  trident_comm* world;
  int64_t epoch;
  int kill_rank; /* this rank SIGKILLs itself before step 4 of epoch 1; -1: none */
  int recoveries;
  int64_t step;
  double w[8];
  trident_buffer state;
} Trainer;

static int Bind(void* user, trident_comm* world, int64_t epoch, int fresh) {
  Trainer* t = (Trainer*)user;
  (void)epoch;
  (void)fresh;
  t->world = world;
  t->epoch = epoch;
  return TRIDENT_OK;
}

static void OnRecovery(void* user, const trident_recovery* r, int64_t resume_step,
                       const char* source) {
  Trainer* t = (Trainer*)user;
  t->recoveries++;
  printf("recovered: epoch %ld, rank %d replaced, resume at %ld from %s\n", (long)r->epoch,
         r->failed_rank, (long)resume_step, source);
}

/* w += mean over ranks of (rank + step), a deterministic function of the step. */
static int Step(void* user) {
  Trainer* t = (Trainer*)user;
  double g[8];
  int i, rc;
  if (t->epoch == 1 && t->step == 3 && trident_comm_rank(t->world) == t->kill_rank) {
    raise(SIGKILL);
  }
  for (i = 0; i < 8; i++) g[i] = trident_comm_rank(t->world) + (double)(t->step + 1);
  rc = trident_allreduce(t->world, g, g, 8, TRIDENT_DTYPE_F64, TRIDENT_AVG, 0, NULL);
  if (rc != TRIDENT_OK) return rc;
  for (i = 0; i < 8; i++) t->w[i] += g[i];
  t->step++;
  return TRIDENT_OK;
}

static int64_t CurrentStep(void* user) { return ((Trainer*)user)->step; }

static int State(void* user, const trident_buffer** buffers, size_t* count) {
  Trainer* t = (Trainer*)user;
  memset(&t->state, 0, sizeof(t->state));
  t->state.name = "w";
  t->state.data = t->w;
  t->state.count = 8;
  t->state.dtype = TRIDENT_DTYPE_F64;
  t->state.replica_index = trident_comm_rank(t->world);
  t->state.replica_count = trident_comm_size(t->world);
  *buffers = &t->state;
  *count = 1;
  return TRIDENT_OK;
}

static void SetRestoredStep(void* user, int64_t step) { ((Trainer*)user)->step = step; }

static void Reset(void* user) {
  Trainer* t = (Trainer*)user;
  t->step = 0;
  memset(t->w, 0, sizeof(t->w));
}

static void Resilient(const char* dir, int kill_rank) {
  trident_runtime* rt = NULL;
  trident_trainable trainable;
  trident_loop_options loop;
  Trainer t;
  int rc, size, i;
  double expected = 0;
  int64_t s;
  memset(&t, 0, sizeof(t));
  t.kill_rank = kill_rank;
  rc = trident_runtime_init(&rt);
  if (rc == TRIDENT_CANCELLED) return; /* a spare the job did not need */
  OK(rc);
  size = trident_runtime_world_size(rt);
  CHECK(trident_runtime_epoch(rt) == (kill_rank < 0 ? 1 : trident_runtime_epoch(rt)));
  CHECK(trident_comm_size(trident_runtime_world(rt)) == size);
  memset(&trainable, 0, sizeof(trainable));
  trainable.struct_size = sizeof(trainable);
  trainable.user = &t;
  trainable.bind = Bind;
  trainable.step = Step;
  trainable.current_step = CurrentStep;
  trainable.state = State;
  trainable.set_restored_step = SetRestoredStep;
  trainable.reset = Reset;
  trident_loop_options_init(&loop);
  loop.steps = 6;
  loop.ckpt_dir = dir;
  loop.ckpt_every = 2;
  loop.on_recovery = OnRecovery;
  loop.user = &t;
  rc = trident_run_resilient(rt, &trainable, &loop);
  if (rc == TRIDENT_CANCELLED) { /* a spare that was promoted to nothing */
    trident_runtime_destroy(rt);
    return;
  }
  CHECK(rc == TRIDENT_OK);
  if (kill_rank >= 0) CHECK(t.recoveries == 1 || trident_runtime_promoted(rt));
  for (s = 1; s <= 6; s++) expected += (size - 1) / 2.0 + (double)s;
  for (i = 0; i < 8; i++) CHECK(t.w[i] == expected);
  CHECK(t.step == 6);
  trident_runtime_destroy(rt);
  /* The loop checkpointed step 6: it loads. */
  {
    trident_buffer b;
    double back[8];
    int64_t loaded = 0;
    memset(&b, 0, sizeof(b));
    b.name = "w";
    b.data = back;
    b.count = 8;
    b.dtype = TRIDENT_DTYPE_F64;
    OK(trident_ckpt_load(dir, -1, &b, 1, &loaded));
    CHECK(loaded == 6);
    CHECK(back[0] == expected);
  }
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "single";
  if (strcmp(mode, "single") == 0) {
    char dir[] = "/tmp/trident-capi-XXXXXX";
    char cmd[64];
    if (mkdtemp(dir) == NULL) return 2;
    ErrorPaths();
    WorldOfOne(dir);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) return 2;
  } else if (strcmp(mode, "multi") == 0 && argc > 2) {
    Multi(argv[2]);
  } else if (strcmp(mode, "deadline") == 0) {
    Deadline();
  } else if (strcmp(mode, "resilient") == 0 && argc > 2) {
    Resilient(argv[2], -1);
  } else if (strcmp(mode, "recover") == 0 && argc > 2) {
    Resilient(argv[2], 1);
  } else {
    fprintf(stderr,
            "usage: capi_test single | multi <dir> | deadline | resilient <dir> | recover <dir>\n");
    return 2;
  }
  if (failures > 0) {
    fprintf(stderr, "capi_test %s: %d check(s) failed\n", mode, failures);
    return 1;
  }
  printf("capi_test %s: ok\n", mode);
  return 0;
}
