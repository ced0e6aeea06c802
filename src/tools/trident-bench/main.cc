// trident-bench: nccl-tests-style measurement of one collective over a range of sizes, on the
// host communicator. Run one process per rank under the launcher:
//
//   trident-run --nproc 4 -- trident-bench allreduce --min-bytes 4K --max-bytes 256M --check
//
// Rank 0 prints a header and one row per size; other ranks print nothing to stdout. See
// bench.h for what each column means. Exit status: 0 when every op succeeded and every
// checked element was right; 1 when an op failed (its status is printed) or an element was
// wrong; 2 on bad usage.
//
// Subcommands that run as one process without trident-run: `trident-bench ckpt` (ckpt.h) and
// `trident-bench recovery` (recovery.h).
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "bench.h"
#include "ckpt.h"
#include "trident/cli.h"
#include "common/cuda.h"
#include "common/logging.h"
#include "common/params.h"
#include "nlohmann/json.hpp"
#include "recovery.h"
#include "trident/communicator.h"
#include "trident/nccl.h"

ABSL_FLAG(std::string, min_bytes, "4K",
          "smallest size in bytes; K, M, G suffixes are binary (4K = 4096)");
ABSL_FLAG(std::string, max_bytes, "32M", "largest size; sizes double from --min-bytes up to it");
ABSL_FLAG(std::string, dtype, "f32", "element type: f32 f64 f16 bf16 i8 u8 i32 i64");
ABSL_FLAG(std::string, op, "sum",
          "reduction of allreduce, reducescatter and reduce: sum prod min max avg");
ABSL_FLAG(int, root, 0, "root rank of broadcast and reduce");
ABSL_FLAG(int, iters, 0,
          "timed calls per size; 0 adapts them to take about 0.3 s per size (3 to 1000)");
ABSL_FLAG(int, warmup, 2, "untimed calls per size before the timed loop");
ABSL_FLAG(bool, check, false,
          "fill inputs with exact rank- and index-dependent values, run once and compare every "
          "element of the result with the value computed locally");
ABSL_FLAG(bool, inplace, false, "allreduce only: use one buffer as input and output");
ABSL_FLAG(std::string, json, "", "also write the rows as JSON to this file (rank 0)");
ABSL_FLAG(std::string, provider, "",
          "libfabric provider (shm, tcp, ...); empty: TRIDENT_FABRIC_PROVIDER, else shm on one "
          "host");
ABSL_FLAG(absl::Duration, timeout, absl::ZeroDuration(),
          "deadline of each op, e.g. 60s; 0: the communicator's default (TRIDENT_TIMEOUT_MS)");
ABSL_FLAG(std::string, device, "cpu",
          "where the buffers live: cpu, or cuda (device TRIDENT_LOCAL_RANK modulo the device "
          "count; the host backend stages them through pinned memory)");
ABSL_FLAG(std::string, backend, "host", "host (libfabric) or nccl (needs --device cuda)");
ABSL_FLAG(bool, heap, false,
          "CPU buffers from the heap (std::vector: 4 KiB pages, as a framework's tensors) "
          "instead of AllocateHostMemory (huge pages where the kernel gives them)");

namespace trident::bench {
namespace {

constexpr char kUsage[] = R"(usage: trident-run --nproc N -- trident-bench OP [flags]

Measures one collective of a communicator (host or NCCL backend) over sizes from --min-bytes to --max-bytes
(doubling), the way nccl-tests does. OP is one of:
  allreduce reducescatter allgather broadcast reduce alltoall sendrecv barrier
(sendrecv: each rank sends to rank+1 and receives from rank-1, 2 ranks or more; barrier:
one row, no data). `trident-bench ckpt --dir DIR` measures the checkpoint engine instead
(one process, no trident-run; see `trident-bench ckpt --help`), and `trident-bench recovery`
failure detection and recovery of lm-trainer (one process that starts trident-run itself;
see `trident-bench recovery --help`).

Rank 0 prints one row per size:
  bytes     size of the full buffer: allreduce, broadcast, reduce: the buffer; allgather:
            the output (each rank gives bytes/N); reducescatter: the input; alltoall: one
            rank's send buffer; sendrecv: one message. Blocked ops round to a multiple of N.
  count     elements of that buffer
  time(us)  max over ranks of the mean time of one call; calls are issued and waited for
            back to back in a timed loop, with one barrier before the loop
  algbw     bytes / time, GB/s (1e9 B/s)
  busbw     algbw x 2(N-1)/N (allreduce), (N-1)/N (reducescatter, allgather, alltoall),
            1 (broadcast, reduce, sendrecv)
  #wrong    with --check, the max over ranks of wrong elements; N/A without it
Exit status: 0 if all went well; 1 if an op failed or an element was wrong; 2 on bad usage.
The communicator comes from TRIDENT_RANK, TRIDENT_WORLD_SIZE and TRIDENT_STORE (set by
trident-run).

Flags (--flag=value or --flag value; dashes and underscores are the same):
)";

void PrintHelp() {
  std::fputs(kUsage, stdout);
  cli::PrintFlag(FLAGS_min_bytes);
  cli::PrintFlag(FLAGS_max_bytes);
  cli::PrintFlag(FLAGS_dtype);
  cli::PrintFlag(FLAGS_op);
  cli::PrintFlag(FLAGS_root);
  cli::PrintFlag(FLAGS_iters);
  cli::PrintFlag(FLAGS_warmup);
  cli::PrintFlag(FLAGS_check);
  cli::PrintFlag(FLAGS_inplace);
  cli::PrintFlag(FLAGS_heap);
  cli::PrintFlag(FLAGS_json);
  cli::PrintFlag(FLAGS_provider);
  cli::PrintFlag(FLAGS_timeout);
  cli::PrintFlag(FLAGS_device);
  cli::PrintFlag(FLAGS_backend);
}

[[noreturn]] void UsageError(absl::string_view message) {
  std::fprintf(stderr, "trident-bench: %s\n(try --help)\n", std::string(message).c_str());
  std::exit(2);
}

std::string FormatRow(const Row& row, absl::string_view dtype, absl::string_view redop,
                      absl::string_view root) {
  std::string wrong = row.wrong < 0 ? "N/A" : absl::StrCat(row.wrong);
  return absl::StrFormat("%14d %12d %5s %6s %5s %6d %12.2f %12.4f %12.4f %8s", row.bytes,
                         row.count, dtype, redop, root, row.iters, row.seconds * 1e6,
                         row.algbw_gbps, row.busbw_gbps, wrong);
}

int Main(int argc, char** argv) {
  // A bad TRIDENT_* setting is a usage error (exit 2), for every subcommand.
  if (absl::Status params = CheckParams(); !params.ok()) {
    std::fprintf(stderr, "trident-bench: %s\n", std::string(params.message()).c_str());
    return 2;
  }
  if (argc >= 2 && std::string(argv[1]) == "ckpt") return RunCkptBench(argc - 1, argv + 1);
  if (argc >= 2 && std::string(argv[1]) == "recovery") {
    return RunRecoveryBench(argc - 1, argv + 1);
  }
  std::vector<std::string> storage;
  std::vector<char*> args = cli::NormalizeArgs(argc, argv, storage);
  if (cli::WantsHelp(args)) {
    PrintHelp();
    return 0;
  }
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(args.size()),
                                                         args.data());
  if (positional.size() != 2) UsageError("expected exactly one OP, e.g. allreduce");

  Config config;
  auto collective = ParseCollective(positional[1]);
  if (!collective.ok()) UsageError(collective.status().message());
  config.collective = *collective;
  auto min_bytes = ParseBytes(absl::GetFlag(FLAGS_min_bytes));
  auto max_bytes = ParseBytes(absl::GetFlag(FLAGS_max_bytes));
  if (!min_bytes.ok()) UsageError(min_bytes.status().message());
  if (!max_bytes.ok()) UsageError(max_bytes.status().message());
  if (*min_bytes < 1 || *max_bytes < *min_bytes) {
    UsageError("need 1 <= --min-bytes <= --max-bytes");
  }
  config.min_bytes = *min_bytes;
  config.max_bytes = *max_bytes;
  auto dtype = ParseDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) UsageError(dtype.status().message());
  config.dtype = *dtype;
  auto reduce = ParseReduceOp(absl::GetFlag(FLAGS_op));
  if (!reduce.ok()) UsageError(reduce.status().message());
  config.reduce = *reduce;
  config.root = absl::GetFlag(FLAGS_root);
  config.iters = absl::GetFlag(FLAGS_iters);
  config.warmup = absl::GetFlag(FLAGS_warmup);
  config.check = absl::GetFlag(FLAGS_check);
  config.in_place = absl::GetFlag(FLAGS_inplace);
  config.heap = absl::GetFlag(FLAGS_heap);
  config.timeout = absl::GetFlag(FLAGS_timeout);
  if (config.iters < 0 || config.warmup < 0) UsageError("--iters and --warmup must be >= 0");
  if (config.in_place && config.collective != Collective::kAllReduce) {
    UsageError("--inplace applies to allreduce only (broadcast is always in place)");
  }
  if (config.timeout < absl::ZeroDuration()) UsageError("--timeout must be >= 0");

  const std::string device_flag = absl::GetFlag(FLAGS_device);
  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (device_flag != "cpu" && device_flag != "cuda") UsageError("--device must be cpu or cuda");
  if (backend != "host" && backend != "nccl") UsageError("--backend must be host or nccl");
  if (backend == "nccl" && device_flag != "cuda") UsageError("--backend nccl needs --device cuda");
  if (device_flag == "cuda") {
    const int devices = cuda::DeviceCount();
    if (devices == 0) {
      std::fprintf(stderr, "trident-bench: --device cuda: no CUDA device: %s\n",
                   cuda::NoDeviceReason().c_str());
      return 1;
    }
    config.cuda_device = static_cast<int>(ParamInt("TRIDENT_LOCAL_RANK") % devices);
  }

  HostCommOptions options;
  options.provider = absl::GetFlag(FLAGS_provider);
  options.name = "bench";
  absl::StatusOr<std::unique_ptr<Communicator>> comm_or;
  if (backend == "nccl") {
    NcclCommOptions nccl;
    nccl.name = "bench";
    nccl.device = config.cuda_device;
    comm_or = CreateNcclCommunicator(nccl);
  } else {
    comm_or = CreateHostCommunicator(options);
  }
  if (!comm_or.ok()) {
    std::fprintf(stderr, "trident-bench: cannot create the communicator: %s\n",
                 comm_or.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<Communicator> comm = std::move(comm_or).value();
  const int rank = comm->rank();
  const int n = comm->size();
  InitLogging(absl::StrCat("rank ", rank));
  if (HasRoot(config.collective) && (config.root < 0 || config.root >= n)) {
    UsageError(absl::StrCat("--root ", config.root, " is not a rank of a world of ", n));
  }
  if (config.collective == Collective::kSendRecv && n < 2) {
    UsageError("sendrecv needs at least 2 ranks (a rank does not send to itself)");
  }

  std::string provider = options.provider;
  if (provider.empty()) provider = ParamString("TRIDENT_FABRIC_PROVIDER");
  if (provider.empty()) provider = "default";
  if (backend == "nccl") provider = "nccl";
  const std::string buffers =
      config.cuda_device >= 0 ? absl::StrCat("cuda:", config.cuda_device)
                              : (config.heap ? "cpu (heap)" : "cpu (AllocateHostMemory)");
  const std::string dtype_name(DTypeName(config.dtype));
  const std::string redop = Reduces(config.collective) ? std::string(ReduceOpName(config.reduce))
                                                       : "-";
  const std::string root = HasRoot(config.collective) ? absl::StrCat(config.root) : "-";
  const std::string name(CollectiveName(config.collective));
  const std::string iters_text =
      config.iters > 0 ? absl::StrCat(config.iters) : "adaptive (~0.3 s per size, 3..1000)";

  if (rank == 0) {
    std::printf("# trident-bench %s: world %d, provider %s, buffers on %s, %s\n", name.c_str(),
                n, provider.c_str(), buffers.c_str(), comm->Describe().c_str());
    std::printf("# dtype %s, redop %s, root %s, %s, iters %s, warmup %d, check %s\n",
                dtype_name.c_str(), redop.c_str(), root.c_str(),
                config.collective == Collective::kAllReduce
                    ? (config.in_place ? "in place" : "out of place")
                    : "-",
                iters_text.c_str(), config.warmup, config.check ? "on" : "off");
    std::printf("#%13s %12s %5s %6s %5s %6s %12s %12s %12s %8s\n", "bytes", "count", "type",
                "redop", "root", "iters", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong");
    std::fflush(stdout);
  }

  nlohmann::json rows = nlohmann::json::array();
  int64_t total_wrong = 0;
  absl::Status status = RunBench(*comm, config, [&](const Row& row) {
    if (row.wrong > 0) total_wrong += row.wrong;
    if (rank != 0) return;
    std::printf("%s\n", FormatRow(row, dtype_name, redop, root).c_str());
    std::fflush(stdout);
    nlohmann::json j = {{"bytes", row.bytes},         {"count", row.count},
                        {"iters", row.iters},         {"time_us", row.seconds * 1e6},
                        {"algbw_gbps", row.algbw_gbps}, {"busbw_gbps", row.busbw_gbps}};
    j["wrong"] = row.wrong < 0 ? nlohmann::json(nullptr) : nlohmann::json(row.wrong);
    rows.push_back(std::move(j));
  });

  if (!status.ok()) {
    std::fprintf(stderr, "trident-bench: rank %d: %s\n", rank, status.ToString().c_str());
    comm->Abort(status);
  }
  const std::string json_path = absl::GetFlag(FLAGS_json);
  if (rank == 0 && !json_path.empty()) {
    nlohmann::json doc = {{"tool", "trident-bench"},
                          {"op", name},
                          {"world_size", n},
                          {"provider", provider},
                          {"backend", backend},
                          {"buffers", buffers},
                          {"communicator", comm->Describe()},
                          {"dtype", dtype_name},
                          {"redop", redop},
                          {"root", HasRoot(config.collective) ? nlohmann::json(config.root)
                                                              : nlohmann::json(nullptr)},
                          {"in_place", config.in_place},
                          {"check", config.check},
                          {"rows", rows}};
    doc["error"] = status.ok() ? nlohmann::json(nullptr) : nlohmann::json(status.ToString());
    std::ofstream out(json_path);
    out << doc.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "trident-bench: cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  if (!status.ok()) return 1;
  if (total_wrong > 0) {
    if (rank == 0) {
      std::fprintf(stderr, "trident-bench: %s: %lld wrong elements (max over ranks, summed over "
                   "sizes)\n", name.c_str(), static_cast<long long>(total_wrong));
    }
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace trident::bench

int main(int argc, char** argv) { return trident::bench::Main(argc, argv); }
