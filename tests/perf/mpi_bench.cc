// mpi_bench: Open MPI's MPI_Allreduce (in place), MPI_Allgather and MPI_Bcast on float32,
// timed with the conventions of trident-bench, so that tests/perf/compare.py can put them
// side by side.
//
//   mpirun --allow-run-as-root --oversubscribe -np 2 mpi_bench --op allreduce
//          --min-bytes 4K --max-bytes 256M --check
//
// On one host Open MPI 4.1 picks pml ob1 + btl vader (shared memory); add
// `--mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo` for loopback TCP.
#include <mpi.h>

#include <cinttypes>
#include <string>
#include <vector>

#include "perf_common.h"

namespace {

constexpr char kUsage[] =
    "usage: mpirun -np N mpi_bench [--op allreduce,allgather,broadcast] [--min-bytes 4K]\n"
    "                  [--max-bytes 256M] [--iters N] [--warmup 2] [--check] [--label TEXT]\n"
    "                  [--no-hugepages]\n"
    "Buffers from 1 MiB up use transparent huge pages, as trident-bench's do, unless\n"
    "--no-hugepages (plain malloc, as research/baselines.md measured).\n";

struct Options {
  std::vector<std::string> ops;
  int64_t min_bytes = 4096;
  int64_t max_bytes = 256 << 20;
  int iters = 0;  // 0: adaptive
  int warmup = 2;
  bool check = false;
  std::string label;
  bool huge_pages = true;
};

double MaxOverRanks(double value) {
  double result = 0;
  MPI_Allreduce(&value, &result, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return result;
}

int RunOp(const Options& o, const std::string& op, int rank, int n) {
  if (rank == 0) {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(version, &len);
    std::string v(version, len);
    v = v.substr(0, v.find_first_of(",\n"));
    std::printf("# mpi_bench %s: world %d, %s%s%s\n", op.c_str(), n, v.c_str(),
                o.label.empty() ? "" : ", ", o.label.c_str());
    perf::PrintSettingsAndColumns(o.iters, o.warmup, o.check, o.huge_pages);
  }
  // Buffers for the largest size, touched once, reused for every size.
  int64_t max_count = perf::CountFor(op, o.max_bytes, n);
  perf::Buffer a(max_count, o.huge_pages);
  perf::Buffer b(op == "allgather" ? max_count : 0, o.huge_pages);

  int64_t total_wrong = 0;
  for (int64_t bytes : perf::Sizes(o.min_bytes, o.max_bytes)) {
    int64_t count = perf::CountFor(op, bytes, n);
    int64_t block = count / n;
    if (count > INT32_MAX) perf::Die("size too large for an int count");
    auto call = [&] {
      int rc;
      if (op == "allreduce") {
        rc = MPI_Allreduce(MPI_IN_PLACE, a.data(), int(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      } else if (op == "allgather") {
        rc = MPI_Allgather(b.data(), int(block), MPI_FLOAT, a.data(), int(block), MPI_FLOAT,
                           MPI_COMM_WORLD);
      } else {
        rc = MPI_Bcast(a.data(), int(count), MPI_FLOAT, 0, MPI_COMM_WORLD);
      }
      if (rc != MPI_SUCCESS) perf::Die(op + " failed with MPI error " + std::to_string(rc));
    };

    int64_t wrong = -1;
    if (o.check) {
      if (op == "allreduce") {
        for (int64_t i = 0; i < count; ++i) a[i] = perf::Value(rank, i);
      } else if (op == "allgather") {
        for (int64_t i = 0; i < block; ++i) b[i] = perf::Value(rank, rank * block + i);
        for (int64_t i = 0; i < count; ++i) a[i] = -1000;
      } else {
        for (int64_t i = 0; i < count; ++i) a[i] = rank == 0 ? perf::Value(0, i) : -1000;
      }
      call();
      int64_t local = 0;
      for (int64_t i = 0; i < count; ++i) {
        float expected;
        if (op == "allreduce") {
          expected = 0;
          for (int r = 0; r < n; ++r) expected += perf::Value(r, i);
        } else if (op == "allgather") {
          expected = perf::Value(int(i / block), i);
        } else {
          expected = perf::Value(0, i);
        }
        local += a[i] != expected;
      }
      wrong = static_cast<int64_t>(MaxOverRanks(double(local)));
      total_wrong += wrong;
      // Back to zeros so that repeated in-place sums stay finite.
      for (int64_t i = 0; i < count; ++i) a[i] = 0;
    }
    int warmup = (o.iters == 0 && o.warmup == 0) ? 1 : o.warmup;
    double per_call = 0;  // the fastest warm-up call, as in trident-bench
    for (int i = 0; i < warmup; ++i) {
      double t0 = perf::Now();
      call();
      double t = perf::Now() - t0;
      per_call = i == 0 ? t : std::min(per_call, t);
    }
    int iters = o.iters > 0 ? o.iters : perf::AdaptiveIters(MaxOverRanks(per_call));
    MPI_Barrier(MPI_COMM_WORLD);
    double start = perf::Now();
    for (int i = 0; i < iters; ++i) call();
    double time = MaxOverRanks((perf::Now() - start) / iters);
    if (rank == 0) {
      perf::PrintRow(count * 4, count, op == "allreduce" ? "sum" : "-",
                     op == "broadcast" ? "0" : "-", iters, time, perf::BusFactor(op, n), wrong);
    }
  }
  if (total_wrong > 0) {
    if (rank == 0) {
      std::fprintf(stderr, "mpi_bench %s: %" PRId64 " wrong elements\n", op.c_str(), total_wrong);
    }
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  perf::Args args(argc, argv);
  if (args.Has("--help") || args.Has("-h")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  MPI_Init(&argc, &argv);
  int rank = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);

  Options o;
  o.ops = perf::SplitComma(args.Get("--op", "allreduce,allgather,broadcast"));
  o.min_bytes = perf::ParseBytes(args.Get("--min-bytes", "4K"));
  o.max_bytes = perf::ParseBytes(args.Get("--max-bytes", "256M"));
  o.iters = std::atoi(args.Get("--iters", "0").c_str());
  o.warmup = std::atoi(args.Get("--warmup", "2").c_str());
  o.check = args.Has("--check");
  o.label = args.Get("--label", "");
  o.huge_pages = !args.Has("--no-hugepages");
  if (o.min_bytes < 1 || o.max_bytes < o.min_bytes) perf::Die("bad --min-bytes/--max-bytes");
  for (const std::string& op : o.ops) {
    if (op != "allreduce" && op != "allgather" && op != "broadcast") perf::Die("unknown op " + op);
  }
  int rc = 0;
  for (const std::string& op : o.ops) rc |= RunOp(o, op, rank, n);
  MPI_Finalize();
  return rc;
}
