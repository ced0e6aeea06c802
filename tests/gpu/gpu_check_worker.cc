// The device check's programs that no unit test is (tests/gpu/check.sh runs them):
//
//   gpu_check_worker nccl-fault kill|stop RANK
//       A rank of an NCCL world started by trident-run, every rank on GPU 0 (each process
//       sets its own NCCL_HOSTID, so that NCCL takes them for ranks of different hosts: a
//       functional check, not a performance one). All ranks loop on an AllReduce; at step 3
//       RANK kills itself with SIGKILL or stops itself with SIGSTOP. A survivor prints
//       "RESULT rank=R code=... elapsed_ms=... msg=..." and exits 0 when its op failed with
//       kAborted or kDeadlineExceeded (never through the exit-70 abort-hang path). The worker
//       plays the runtime's part: it aborts the communicator when trident-run records a
//       failure (job/failed/<rank>), as the backend itself reads no failure records.
//
//   gpu_check_worker nccl-exchange
//       A rank of a 2-rank NCCL world on GPU 0 (own NCCL_HOSTID, as above): both ranks send
//       two equal-size buffers (tags 1 and 2) to each other and receive two in one SendRecv
//       batch, listing the receives in opposite orders; each must land by its tag. Exits 0
//       when every value is right.
//
//   gpu_check_worker versions
//       What this process loads: the NCCL version (ncclGetVersion), the CUDA runtime and
//       driver versions, and the CUDA devices ("devices=0 reason=..." without one). Exits 0
//       with at least one device, 3 without.
//
//   gpu_check_worker nccl-latency BYTES
//       The cost of Trident's non-blocking NCCL path per op: one process, GPU 0, a world of one
//       rank. A small in-place AllReduce of BYTES through Trident (issue, then Work::Wait, which
//       polls the op's event) against a plain blocking ncclAllReduce on a communicator made
//       with ncclCommInitAll (then cudaStreamSynchronize), both on one stream of the caller's,
//       in alternating rounds; and the same with 100 ops queued before one wait. Prints
//       "RESULT latency ..." with the best round of each and the ratios Trident / plain; exits
//       0 when both ran and the values are right (the ratio is a measurement, not a verdict).
//
//   gpu_check_worker host-order
//       A rank of a host-backend world (trident-run, any size) on CUDA tensors on GPU 0: the
//       input is produced on a non-blocking stream of the caller's (memset, then a copy from
//       pinned memory), and three in-place AllReduces of it are issued back to back on that
//       stream without a Wait in between; then a Send of the result from rank 0 to rank 1.
//       Each op must see its predecessor's result: rank r starts at r + 1, so after three
//       sums every element is S * n^2 with S = n(n+1)/2. Prints "RESULT rank=R order wrong=K";
//       exits 0 when nothing is wrong.
//
//   gpu_check_worker staging-bw BYTES
//       The checkpoint engine's snapshot of one CUDA tensor of BYTES (the stall of Save: a
//       copy into its page-locked staging) against cudaMemcpy from device to cudaMallocHost
//       memory. Prints "RESULT staging ..." with both rates and their ratio; exits 0 when the
//       ratio is at least 0.8.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/host/inproc.h"
#include "common/cuda.h"
#include "health/failure_watcher.h"
#include "trident/checkpoint.h"
#include "trident/communicator.h"
#include "trident/nccl.h"
#include "trident/store.h"

#if TRIDENT_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
#if TRIDENT_HAVE_NCCL
#include <nccl.h>
#endif

namespace trident {
namespace {


void Result(int rank, const absl::Status& s, absl::Duration elapsed) {
  std::printf("RESULT rank=%d code=%s elapsed_ms=%lld msg=%s\n", rank,
              absl::StatusCodeToString(s.code()).c_str(),
              static_cast<long long>(absl::ToInt64Milliseconds(elapsed)),
              std::string(s.message()).c_str());
  std::fflush(stdout);
}

// A world communicator of every rank on GPU 0, each process its own NCCL "host".
absl::StatusOr<std::shared_ptr<Communicator>> NcclOnGpu0(int rank,
                                                         const std::shared_ptr<Store>& store) {
  // Before NCCL's first call: NCCL refuses two ranks on one GPU within one host.
  setenv("NCCL_HOSTID", absl::StrCat("trident-check-", rank).c_str(), 1);
  NcclCommOptions options;
  options.store = store;
  options.device = 0;
  options.timeout = absl::Seconds(3);
  auto made = CreateNcclCommunicator(options);
  if (!made.ok()) return made.status();
  return std::shared_ptr<Communicator>(std::move(*made));
}

int EnvRank() {
  const char* rank_env = std::getenv("TRIDENT_RANK");
  return rank_env != nullptr ? std::atoi(rank_env) : 0;
}

int NcclExchange() {
  const int rank = EnvRank();
  auto store = ConnectStoreFromEnv(DeadlineIn(absl::Seconds(30)));
  if (!store.ok()) {
    std::printf("RESULT rank=%d store: %s\n", rank, store.status().ToString().c_str());
    return 1;
  }
  auto comm = NcclOnGpu0(rank, std::shared_ptr<Store>(std::move(*store)));
  if (!comm.ok()) {
    std::printf("RESULT rank=%d create: %s\n", rank, comm.status().ToString().c_str());
    return 1;
  }
  const int n = 1 << 16, peer = 1 - rank;
  std::vector<float> host(n);
  std::vector<std::unique_ptr<cuda::DeviceBuffer>> bufs;
  for (int i = 0; i < 4; ++i) {
    auto b = cuda::DeviceBuffer::Allocate(n * sizeof(float), 0);
    if (!b.ok()) return 1;
    bufs.push_back(std::move(*b));
  }
  // bufs[0], [1]: sent with tags 1 and 2; [2], [3]: received with tags 1 and 2.
  for (int i = 0; i < 2; ++i) {
    std::fill(host.begin(), host.end(), 100.0f * rank + i + 1);
    if (!cuda::CopyToDevice(bufs[i]->data(), host.data(), n * sizeof(float)).ok()) return 1;
  }
  auto view = [&](int i) { return Tensor(bufs[i]->data(), DType::kF32, {n}, Device::Cuda(0)); };
  std::vector<P2POp> ops = {{P2POp::Kind::kSend, view(0), peer, 1},
                            {P2POp::Kind::kSend, view(1), peer, 2},
                            {P2POp::Kind::kRecv, view(2), peer, 1},
                            {P2POp::Kind::kRecv, view(3), peer, 2}};
  if (rank == 1) std::swap(ops[2], ops[3]);
  const absl::Time start = absl::Now();
  absl::Status s = (*comm)->SendRecv(ops)->Wait(absl::Now() + absl::Seconds(30));
  Result(rank, s, absl::Now() - start);
  if (!s.ok()) return 1;
  int wrong = 0;
  for (int tag = 1; tag <= 2; ++tag) {
    if (!cuda::CopyToHost(host.data(), bufs[tag + 1]->data(), n * sizeof(float)).ok()) return 1;
    for (float v : host) wrong += v != 100.0f * peer + tag;
  }
  std::printf("RESULT rank=%d exchange wrong=%d\n", rank, wrong);
  return wrong == 0 ? 0 : 1;
}

int NcclFault(bool stop, int victim) {
  const int rank = EnvRank();
  auto store = ConnectStoreFromEnv(DeadlineIn(absl::Seconds(30)));
  if (!store.ok()) {
    std::printf("RESULT rank=%d store: %s\n", rank, store.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<Store> shared_store = std::move(*store);
  auto made = NcclOnGpu0(rank, shared_store);
  if (!made.ok()) {
    std::printf("RESULT rank=%d create: %s\n", rank, made.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<Communicator> comm = std::move(*made);

  // The runtime's part: abort when the launcher records a failure.
  std::atomic<bool> done{false};
  std::thread policy([&] {
    while (!done.load()) {
      // The runtime's watcher, in miniature: the one reader of the failure records.
      if (std::optional<std::string> over =
              health::FailureWatcher(shared_store).EpochOver(1, DeadlineIn(absl::Seconds(1)))) {
        comm->Abort(absl::AbortedError(absl::StrCat(*over, " (epoch 1)")));
        return;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  });

  auto buffer = cuda::DeviceBuffer::Allocate((1 << 20) * sizeof(float), 0);
  if (!buffer.ok()) {
    std::printf("RESULT rank=%d alloc: %s\n", rank, buffer.status().ToString().c_str());
    done = true;
    policy.join();
    return 1;
  }
  Tensor t((*buffer)->data(), DType::kF32, {1 << 20}, Device::Cuda(0));
  int exit_code = 1;
  for (int step = 0; step < 1000; ++step) {
    const absl::Time start = absl::Now();
    auto work = comm->AllReduce(t, t, ReduceOp::kSum);
    if (rank == victim && step == 3) {
      if (stop) {
        (void)shared_store->Set("check/stopped_pid", absl::StrCat(getpid()),
                                DeadlineIn(absl::Seconds(5)));
        raise(SIGSTOP);
      } else {
        raise(SIGKILL);
      }
    }
    absl::Status s = work->Wait(absl::Now() + absl::Seconds(60));
    if (!s.ok()) {
      Result(rank, s, absl::Now() - start);
      exit_code = s.code() == absl::StatusCode::kAborted ||
                          s.code() == absl::StatusCode::kDeadlineExceeded
                      ? 0
                      : 1;
      break;
    }
  }
  if (stop && rank != victim) {
    // End the stopped rank, so that the job ends too.
    auto pid = shared_store->TryGet("check/stopped_pid", DeadlineIn(absl::Seconds(5)));
    int p = 0;
    if (pid.ok() && absl::SimpleAtoi(*pid, &p) && p > 0) kill(p, SIGKILL);
  }
  done = true;
  policy.join();
  comm.reset();  // waits for ncclCommAbort (bounded: exit 70 if it hangs)
  return exit_code;
}

int NcclLatency(int64_t bytes) {
#if !TRIDENT_HAVE_NCCL
  std::printf("RESULT latency: this build has no NCCL\n");
  return 1;
#else
  if (cuda::DeviceCount() == 0) {
    std::printf("RESULT latency: no CUDA device (%s)\n", cuda::NoDeviceReason().c_str());
    return 1;
  }
  const int64_t count = std::max<int64_t>(bytes / 4, 1);
  auto fail = [](const std::string& what) {
    std::printf("RESULT latency: %s\n", what.c_str());
    return 1;
  };
  NcclCommOptions options;
  options.rank = 0;
  options.world_size = 1;
  options.store = NewMemoryStore();
  options.device = 0;
  options.timeout = absl::Seconds(30);
  options.name = "latency";
  auto trident = CreateNcclCommunicator(options);
  if (!trident.ok()) {
    return fail(absl::StrCat("CreateNcclCommunicator: ", trident.status().ToString()));
  }
  if (cudaSetDevice(0) != cudaSuccess) return fail("cudaSetDevice(0) failed");
  ncclComm_t plain = nullptr;
  int devs[1] = {0};
  if (ncclResult_t r = ncclCommInitAll(&plain, 1, devs); r != ncclSuccess) {
    return fail(absl::StrCat("ncclCommInitAll: ", ncclGetErrorString(r)));
  }
  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    return fail("cudaStreamCreateWithFlags failed");
  }
  auto buffer = cuda::DeviceBuffer::Allocate(count * sizeof(float), 0);
  if (!buffer.ok()) return fail(buffer.status().ToString());
  std::vector<float> host(count, 1.0f);
  if (!cuda::CopyToDevice((*buffer)->data(), host.data(), count * sizeof(float)).ok()) {
    return fail("upload failed");
  }
  Tensor t((*buffer)->data(), DType::kF32, {count}, Device::Cuda(0));
  OpOptions op;
  op.cuda_stream = stream;
  op.timeout = absl::Seconds(30);
  // One round of `ops` ops, waiting after every `batch`; seconds per op, or -1 on an error.
  auto trident_round = [&](int ops, int batch) {
    const absl::Time start = absl::Now();
    for (int i = 0; i < ops; i += batch) {
      std::shared_ptr<Work> last;
      for (int j = 0; j < batch; ++j) last = (*trident)->AllReduce(t, t, ReduceOp::kSum, op);
      if (!last->Wait(absl::Now() + absl::Seconds(30)).ok()) return -1.0;
    }
    return absl::ToDoubleSeconds(absl::Now() - start) / ops;
  };
  auto plain_round = [&](int ops, int batch) {
    const absl::Time start = absl::Now();
    for (int i = 0; i < ops; i += batch) {
      for (int j = 0; j < batch; ++j) {
        if (ncclAllReduce(t.data(), t.data(), count, ncclFloat32, ncclSum, plain, stream) !=
            ncclSuccess) {
          return -1.0;
        }
      }
      if (cudaStreamSynchronize(stream) != cudaSuccess) return -1.0;
    }
    return absl::ToDoubleSeconds(absl::Now() - start) / ops;
  };
  double best[2][2] = {{1e9, 1e9}, {1e9, 1e9}};  // [trident, plain][sync, queued]
  trident_round(50, 1);  // warm up both
  plain_round(50, 1);
  for (int round = 0; round < 6; ++round) {
    for (int queued = 0; queued < 2; ++queued) {
      const int batch = queued ? 100 : 1;
      // Alternate which goes first, so that neither always runs on a warmer GPU.
      for (int k = 0; k < 2; ++k) {
        const int which = (round + k) % 2;
        const double s = which == 0 ? trident_round(500, batch) : plain_round(500, batch);
        if (s < 0) return fail(which == 0 ? "a Trident AllReduce failed" : "ncclAllReduce failed");
        best[which][queued] = std::min(best[which][queued], s);
      }
    }
  }
  // World size one: a sum leaves the value as it was.
  if (!cuda::CopyToHost(host.data(), (*buffer)->data(), count * sizeof(float)).ok()) {
    return fail("download failed");
  }
  int64_t wrong = 0;
  for (float v : host) wrong += v != 1.0f;
  ncclCommDestroy(plain);
  cudaStreamDestroy(stream);
  std::printf(
      "RESULT latency bytes=%lld sync: trident_us=%.1f plain_us=%.1f ratio=%.2f; queued x100: "
      "trident_us=%.1f plain_us=%.1f ratio=%.2f; wrong=%lld\n",
      static_cast<long long>(count * 4), best[0][0] * 1e6, best[1][0] * 1e6,
      best[0][0] / best[1][0], best[0][1] * 1e6, best[1][1] * 1e6, best[0][1] / best[1][1],
      static_cast<long long>(wrong));
  return wrong == 0 ? 0 : 1;
#endif
}

int HostOrder() {
#if !TRIDENT_HAVE_CUDA
  std::printf("RESULT host-order: this build has no CUDA\n");
  return 1;
#else
  const int rank = EnvRank();
  auto fail = [rank](const std::string& what) {
    std::printf("RESULT rank=%d host-order: %s\n", rank, what.c_str());
    return 1;
  };
  if (cuda::DeviceCount() == 0) {
    return fail(absl::StrCat("no CUDA device (", cuda::NoDeviceReason(), ")"));
  }
  auto made = CreateHostCommunicator({});
  if (!made.ok()) return fail(made.status().ToString());
  Communicator& comm = **made;
  const int n = comm.size();
  if (comm.rank() != rank) {
    return fail(absl::StrCat("TRIDENT_RANK ", rank, " is rank ", comm.rank()));
  }
  const int64_t count = 1 << 18;  // 1 MiB of floats: the ring, several chunks
  const size_t bytes = count * sizeof(float);
  if (cudaSetDevice(0) != cudaSuccess) return fail("cudaSetDevice(0) failed");
  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    return fail("cudaStreamCreateWithFlags failed");
  }
  auto buffer = cuda::DeviceBuffer::Allocate(bytes, 0);
  auto received = cuda::DeviceBuffer::Allocate(bytes, 0);
  if (!buffer.ok() || !received.ok()) return fail("cudaMalloc failed");
  void* pinned = nullptr;
  if (cudaMallocHost(&pinned, bytes) != cudaSuccess) return fail("cudaMallocHost failed");
  std::fill_n(static_cast<float*>(pinned), count, static_cast<float>(rank + 1));
  // The input is produced on the caller's stream, and nobody waits for it: the op must.
  cudaMemsetAsync((*buffer)->data(), 0, bytes, stream);
  cudaMemcpyAsync((*buffer)->data(), pinned, bytes, cudaMemcpyHostToDevice, stream);
  Tensor t((*buffer)->data(), DType::kF32, {count}, Device::Cuda(0));
  Tensor r((*received)->data(), DType::kF32, {count}, Device::Cuda(0));
  OpOptions op;
  op.cuda_stream = stream;
  std::vector<std::shared_ptr<Work>> works;
  for (int i = 0; i < 3; ++i) works.push_back(comm.AllReduce(t, t, ReduceOp::kSum, op));
  if (n > 1 && rank == 0) works.push_back(comm.Send(t, 1, 5, op));
  if (n > 1 && rank == 1) works.push_back(comm.Recv(r, 0, 5, op));
  for (auto& w : works) {
    if (absl::Status s = w->Wait(absl::Now() + absl::Seconds(60)); !s.ok()) {
      return fail(s.ToString());
    }
  }
  const float expect = static_cast<float>(n * (n + 1) / 2) * n * n;
  std::vector<float> host(count);
  int64_t wrong = 0;
  for (Tensor* which : {&t, &r}) {
    if (which == &r && !(n > 1 && rank == 1)) continue;
    if (!cuda::CopyToHost(host.data(), which->data(), bytes).ok()) return fail("download failed");
    for (float v : host) wrong += v != expect;
  }
  cudaStreamSynchronize(stream);
  cudaFreeHost(pinned);
  cudaStreamDestroy(stream);
  std::printf("RESULT rank=%d order n=%d expect=%g wrong=%lld\n", rank, n, expect,
              static_cast<long long>(wrong));
  return wrong == 0 ? 0 : 1;
#endif
}

int Versions() {
  int nccl = 0;
#if TRIDENT_HAVE_NCCL
  if (ncclGetVersion(&nccl) != ncclSuccess) nccl = -1;
#endif
  int runtime = 0, driver = 0;
#if TRIDENT_HAVE_CUDA
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) runtime = -1;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = -1;
#endif
  const int devices = cuda::DeviceCount();
  std::string names;
#if TRIDENT_HAVE_CUDA
  for (int d = 0; d < devices; ++d) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, d) == cudaSuccess) {
      absl::StrAppend(&names, d > 0 ? "," : "", prop.name);
    }
  }
#endif
  std::printf("nccl=%d.%d.%d cuda_runtime=%d cuda_driver=%d devices=%d names=[%s] reason=%s\n",
              nccl / 10000, (nccl % 10000) / 100, nccl % 100, runtime, driver, devices,
              names.c_str(), devices == 0 ? cuda::NoDeviceReason().c_str() : "");
  return devices > 0 ? 0 : 3;
}

int StagingBandwidth(int64_t bytes) {
#if !TRIDENT_HAVE_CUDA
  std::printf("RESULT staging: this build has no CUDA\n");
  return 1;
#else
  if (cuda::DeviceCount() == 0) {
    std::printf("RESULT staging: no CUDA device (%s)\n", cuda::NoDeviceReason().c_str());
    return 1;
  }
  auto device = cuda::DeviceBuffer::Allocate(bytes, 0);
  if (!device.ok()) {
    std::printf("RESULT staging: %s\n", device.status().ToString().c_str());
    return 1;
  }
  // Reference: cudaMemcpy into page-locked memory, best of five.
  void* pinned = nullptr;
  if (cudaMallocHost(&pinned, bytes) != cudaSuccess) {
    std::printf("RESULT staging: cudaMallocHost(%lld) failed\n", static_cast<long long>(bytes));
    return 1;
  }
  double best_ref = 0;
  for (int i = 0; i < 5; ++i) {
    const absl::Time start = absl::Now();
    if (cudaMemcpy(pinned, (*device)->data(), bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
      std::printf("RESULT staging: cudaMemcpy failed\n");
      return 1;
    }
    best_ref = std::max(best_ref, bytes / absl::ToDoubleSeconds(absl::Now() - start) / 1e9);
  }
  cudaFreeHost(pinned);

  // The engine: one rank, the whole state in its staging; the first save faults it in.
  const std::string dir =
      (std::filesystem::temp_directory_path() / absl::StrCat("trident-staging-", getpid()))
          .string();
  InprocCommOptions inproc;
  inproc.size = 1;
  std::shared_ptr<Communicator> comm = std::move(NewInprocCommunicators(inproc)[0]);
  CheckpointOptions options;
  options.dir = dir;
  options.comm = comm;
  options.memory_budget_bytes = bytes;
  options.reserve_bytes = bytes;
  options.keep_last = 1;
  options.peer_replicas = false;
  auto engine = CheckpointEngine::Create(options);
  if (!engine.ok()) {
    std::printf("RESULT staging: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  CheckpointState state;
  state.tensors.push_back(
      {"w", Tensor((*device)->data(), DType::kU8, {bytes}, Device::Cuda(0)), {}});
  double best_engine = 0;
  for (int step = 1; step <= 4; ++step) {
    auto save = (*engine)->Save(step, state);
    if (!save.ok()) {
      std::printf("RESULT staging: Save: %s\n", save.status().ToString().c_str());
      return 1;
    }
    if (absl::Status s = (*save)->Wait(); !s.ok()) {
      std::printf("RESULT staging: save %d: %s\n", step, s.ToString().c_str());
      return 1;
    }
    const double seconds = (*save)->stats().snapshot_seconds;
    if (step > 1 && seconds > 0) best_engine = std::max(best_engine, bytes / seconds / 1e9);
  }
  engine->reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  const double ratio = best_ref > 0 ? best_engine / best_ref : 0;
  std::printf("RESULT staging bytes=%lld engine_gbps=%.2f cudamemcpy_pinned_gbps=%.2f ratio=%.2f "
              "goal>=0.80\n",
              static_cast<long long>(bytes), best_engine, best_ref, ratio);
  return ratio >= 0.8 ? 0 : 1;
#endif
}

int Main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "";
  if (what == "versions") return Versions();
  if (what == "nccl-exchange") return NcclExchange();
  if (what == "nccl-fault" && argc == 4) {
    const std::string how = argv[2];
    if (how == "kill" || how == "stop") return NcclFault(how == "stop", std::atoi(argv[3]));
  }
  if (what == "host-order") return HostOrder();
  int64_t bytes = 0;
  if (what == "nccl-latency" && argc == 3 && absl::SimpleAtoi(argv[2], &bytes) && bytes > 0) {
    return NcclLatency(bytes);
  }
  if (what == "staging-bw" && argc == 3 && absl::SimpleAtoi(argv[2], &bytes) && bytes > 0) {
    return StagingBandwidth(bytes);
  }
  std::fprintf(stderr,
               "usage: gpu_check_worker versions | nccl-exchange | nccl-fault kill|stop RANK | "
               "nccl-latency BYTES | host-order | staging-bw BYTES\n");
  return 2;
}

}  // namespace
}  // namespace trident

int main(int argc, char** argv) { return trident::Main(argc, argv); }
