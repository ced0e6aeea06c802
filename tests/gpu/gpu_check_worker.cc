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
  int64_t bytes = 0;
  if (what == "staging-bw" && argc == 3 && absl::SimpleAtoi(argv[2], &bytes) && bytes > 0) {
    return StagingBandwidth(bytes);
  }
  std::fprintf(stderr,
               "usage: gpu_check_worker versions | nccl-exchange | nccl-fault kill|stop RANK | staging-bw BYTES\n");
  return 2;
}

}  // namespace
}  // namespace trident

int main(int argc, char** argv) { return trident::Main(argc, argv); }
