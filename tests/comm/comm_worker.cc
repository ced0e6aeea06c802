// A rank of the multi-process communicator tests, started by trident-run (see
// multiproc_test.cc). Each scenario prints "RESULT ..." lines that the test checks.
//
//   comm_worker allops            every op on a few dtypes and counts, results checked
//   comm_worker preopened         the same over an endpoint opened before the communicator
//   comm_worker kill RANK         RANK kills itself with SIGKILL while the others are inside an
//                                 AllReduce; the world
//                                 comes from trident::Runtime, which learns the cause from
//                                 trident-run (a communicator reads no job state itself)
//   comm_worker absent RANK       RANK never calls the AllReduce the others wait in
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm_test_util.h"
#include "trident/communicator.h"
#include "trident/runtime.h"

namespace trident {
namespace {

using testing::Buffer;

void Result(int rank, const std::string& what, const absl::Status& s, absl::Duration elapsed) {
  std::printf("RESULT rank=%d %s code=%s elapsed_ms=%lld msg=%s\n", rank, what.c_str(),
              absl::StatusCodeToString(s.code()).c_str(),
              static_cast<long long>(absl::ToInt64Milliseconds(elapsed)),
              std::string(s.message()).c_str());
  std::fflush(stdout);
}

// Checks every op once per dtype/count; returns the number of failures.
int AllOps(Communicator& c) {
  const int n = c.size(), r = c.rank();
  int failures = 0;
  auto check = [&](const std::string& what, absl::Status s, size_t wrong) {
    if (!s.ok() || wrong != 0) {
      ++failures;
      std::printf("FAIL %s: %s, %zu wrong\n", what.c_str(), s.ToString().c_str(), wrong);
    }
  };
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI64, DType::kU8}) {
    for (size_t count : {size_t{0}, size_t{1}, size_t{1000}, size_t{1} << 20}) {
      const std::string tag = absl::StrCat(DTypeName(dtype), " count ", count);
      const size_t block = (count + n - 1) / n;
      {  // AllReduce, in place, sum
        Buffer b(dtype, count);
        for (size_t i = 0; i < count; ++i) b.Set(i, (r + i) % 3);
        absl::Status s = c.AllReduce(b.tensor(), b.tensor(), ReduceOp::kSum)->Wait();
        size_t wrong = 0;
        for (size_t i = 0; i < count; ++i) {
          double want = 0;
          for (int p = 0; p < n; ++p) want += (p + i) % 3;
          wrong += b.Get(i) != want;
        }
        check("AllReduce " + tag, s, wrong);
      }
      {  // ReduceScatter max
        Buffer in(dtype, block * n), out(dtype, block);
        for (size_t i = 0; i < block * n; ++i) in.Set(i, (r * 5 + i) % 7);
        absl::Status s = c.ReduceScatter(in.tensor(), out.tensor(), ReduceOp::kMax)->Wait();
        size_t wrong = 0;
        for (size_t j = 0; j < block; ++j) {
          double want = 0;
          for (int p = 0; p < n; ++p) want = std::max<double>(want, (p * 5 + r * block + j) % 7);
          wrong += out.Get(j) != want;
        }
        check("ReduceScatter " + tag, s, wrong);
      }
      {  // AllGather
        Buffer in(dtype, block), out(dtype, block * n);
        for (size_t j = 0; j < block; ++j) in.Set(j, (r + j) % 11);
        absl::Status s = c.AllGather(in.tensor(), out.tensor())->Wait();
        size_t wrong = 0;
        for (int p = 0; p < n; ++p) {
          for (size_t j = 0; j < block; ++j) wrong += out.Get(p * block + j) != (p + j) % 11;
        }
        check("AllGather " + tag, s, wrong);
      }
      {  // Broadcast from the last rank
        Buffer b(dtype, count);
        for (size_t i = 0; i < count; ++i) b.Set(i, r == n - 1 ? i % 13 : 0);
        absl::Status s = c.Broadcast(b.tensor(), n - 1)->Wait();
        size_t wrong = 0;
        for (size_t i = 0; i < count; ++i) wrong += b.Get(i) != i % 13;
        check("Broadcast " + tag, s, wrong);
      }
      {  // Reduce min to rank 0
        Buffer in(dtype, count), out(dtype, count);
        for (size_t i = 0; i < count; ++i) in.Set(i, 1 + (r + i) % 4);
        absl::Status s = c.Reduce(in.tensor(), out.tensor(), ReduceOp::kMin, 0)->Wait();
        size_t wrong = 0;
        if (r == 0) {
          for (size_t i = 0; i < count; ++i) {
            double want = 99;
            for (int p = 0; p < n; ++p) want = std::min<double>(want, 1 + (p + i) % 4);
            wrong += out.Get(i) != want;
          }
        }
        check("Reduce " + tag, s, wrong);
      }
      {  // AllToAll
        Buffer in(dtype, block * n), out(dtype, block * n);
        for (int j = 0; j < n; ++j) {
          for (size_t k = 0; k < block; ++k) in.Set(j * block + k, (r * 3 + j + k) % 17);
        }
        absl::Status s = c.AllToAll(in.tensor(), out.tensor())->Wait();
        size_t wrong = 0;
        for (int i = 0; i < n; ++i) {
          for (size_t k = 0; k < block; ++k) wrong += out.Get(i * block + k) != (i * 3 + r + k) % 17;
        }
        check("AllToAll " + tag, s, wrong);
      }
      {  // Send right, receive from the left
        Buffer out(dtype, count), in(dtype, count);
        for (size_t i = 0; i < count; ++i) out.Set(i, (r + i) % 19);
        auto send = c.Send(out.tensor(), (r + 1) % n, 9);
        auto recv = c.Recv(in.tensor(), (r + n - 1) % n, 9);
        absl::Status s = send->Wait();
        if (s.ok()) s = recv->Wait();
        size_t wrong = 0;
        for (size_t i = 0; i < count; ++i) wrong += in.Get(i) != ((r + n - 1) % n + i) % 19;
        check("SendRecv " + tag, s, wrong);
      }
    }
  }
  check("Barrier", c.Barrier()->Wait(), 0);
  return failures;
}

int Main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "allops";
  const int special = argc > 2 ? std::atoi(argv[2]) : -1;
  HostCommOptions options;
  const bool all_ops = scenario == "allops" || scenario == "preopened";
  if (!all_ops) options.timeout = absl::Seconds(3);
  if (scenario == "preopened") {
    auto endpoint = OpenHostEndpoint();  // TRIDENT_FABRIC_PROVIDER, as the communicator's
    if (!endpoint.ok()) {
      std::printf("RESULT open failed: %s\n", endpoint.status().ToString().c_str());
      return 1;
    }
    options.endpoint = *endpoint;
  }
  std::unique_ptr<Runtime> runtime;
  absl::StatusOr<std::unique_ptr<Communicator>> comm;
  if (scenario == "kill") {
    auto rt = Runtime::Init({.timeout = options.timeout});
    if (!rt.ok()) {
      std::printf("RESULT runtime failed: %s\n", rt.status().ToString().c_str());
      return 1;
    }
    runtime = *std::move(rt);
    comm = std::unique_ptr<Communicator>();  // the runtime's world below
  } else {
    comm = CreateHostCommunicator(options);
  }
  if (!comm.ok()) {
    std::printf("RESULT create failed: %s\n", comm.status().ToString().c_str());
    return 1;
  }
  Communicator& c = runtime ? runtime->world() : **comm;
  const int r = c.rank();

  if (all_ops) {
    int failures = AllOps(c);
    std::printf("RESULT rank=%d %s failures=%d\n", r, scenario.c_str(), failures);
    return failures == 0 ? 0 : 1;
  }
  std::vector<float> data(1 << 18, 1.0f);
  Tensor t = Tensor::Of(data.data(), data.size());
  if (scenario == "kill") {
    for (int step = 0;; ++step) {
      const absl::Time start = absl::Now();
      // Killed before it issues op #3, while the others wait inside it (killed after issuing
      // it, its worker may still finish the op with them on the shared-memory engine, and
      // their runtime then aborts the world before they issue the next op).
      if (r == special && step == 3) raise(SIGKILL);
      auto work = c.AllReduce(t, t, ReduceOp::kAvg);
      absl::Status s = work->Wait();
      if (!s.ok()) {
        Result(r, "kill", s, absl::Now() - start);
        return 0;
      }
    }
  }
  if (scenario == "absent") {
    if (r == special) {
      // Stay alive, without calling the op, until the others have given up on it.
      auto store = ConnectStoreFromEnv(DeadlineIn(absl::Seconds(10)));
      // Every other rank, not the first: a process that exits is noticed at once by the
      // shared-memory engine (as a death, not an absence).
      std::vector<std::string> done;
      for (int p = 0; p < c.size(); ++p) {
        if (p != special) done.push_back(absl::StrCat("test/others_done/", p));
      }
      if (store.ok()) (void)(*store)->Wait(done, DeadlineIn(absl::Seconds(30)));
      return 0;
    }
    const absl::Time start = absl::Now();
    absl::Status s = c.AllReduce(t, t, ReduceOp::kSum)->Wait();
    Result(r, "absent", s, absl::Now() - start);
    auto store = ConnectStoreFromEnv(DeadlineIn(absl::Seconds(10)));
    if (store.ok()) {
      (void)(*store)->Set(absl::StrCat("test/others_done/", r), "1", DeadlineIn(absl::Seconds(10)));
    }
    return 0;
  }
  std::printf("unknown scenario %s\n", scenario.c_str());
  return 2;
}

}  // namespace
}  // namespace trident

int main(int argc, char** argv) { return trident::Main(argc, argv); }
