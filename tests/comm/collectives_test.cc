// Every collective x every dtype x world sizes {1, 2, 3, 4, 7} x counts {0, 1, 7, 1000, 1M},
// ranks as threads over the in-process transport, results checked element by element
// against a reference computed here.
//
// Bounds: inputs are small integers, so sums, products, minima and maxima are exact in every
// dtype and are compared for equality (bound 0). avg divides an exact sum by the world size:
// compared within a relative 1e-6 (f32), 1e-12 (f64) and 1e-2 (f16, bf16).
#include <atomic>
#include <cmath>
#include <functional>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "comm/host/inproc.h"
#include "comm_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trident {
namespace {

using testing::Buffer;
using testing::RunRanks;

double Value(ReduceOp op, int rank, size_t i) {
  if (op == ReduceOp::kProd) return 1 + static_cast<double>((rank + i) % 2);
  return 1 + static_cast<double>((rank * 7 + i * 3) % 5);
}

double Reference(ReduceOp op, int n, size_t i) {
  double acc = Value(op, 0, i);
  for (int r = 1; r < n; ++r) {
    double v = Value(op, r, i);
    switch (op) {
      case ReduceOp::kSum: case ReduceOp::kAvg: acc += v; break;
      case ReduceOp::kProd: acc *= v; break;
      case ReduceOp::kMin: acc = std::min(acc, v); break;
      case ReduceOp::kMax: acc = std::max(acc, v); break;
    }
  }
  return op == ReduceOp::kAvg ? acc / n : acc;
}

double Bound(DType dtype, ReduceOp op) {
  if (op != ReduceOp::kAvg) return 0;
  switch (dtype) {
    case DType::kF32: return 1e-6;
    case DType::kF64: return 1e-12;
    default: return 1e-2;
  }
}

// Every expected value here repeats with the index: Value's patterns every 10 elements,
// AllToAll's every 100. Expected holds one period of them, already as the dtype stores them
// (integers wrap, floats round), so that checking a million elements is a lookup each, not
// a reference computation and a conversion each (which made this test take minutes).
constexpr size_t kPeriod = 10;

class Expected {
 public:
  Expected(DType dtype, size_t period, const std::function<double(size_t)>& want)
      : values_(period) {
    Buffer stored(dtype, period);
    for (size_t i = 0; i < period; ++i) stored.Set(i, want(i));
    for (size_t i = 0; i < period; ++i) values_[i] = stored.Get(i);
  }
  double operator[](size_t i) const { return values_[i % values_.size()]; }

 private:
  std::vector<double> values_;
};

bool Matches(double bound, double got, double want) {
  return bound == 0 ? got == want : std::abs(got - want) <= bound * std::abs(want);
}

// The largest count: a million elements, or 70001 under a sanitizer (every check runs several
// times slower there; 70001 still spans several chunks per block in every dtype).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr size_t kLargeCount = 70001;
#else
constexpr size_t kLargeCount = size_t{1} << 20;
#endif

std::vector<ReduceOp> OpsFor(DType dtype) {
  std::vector<ReduceOp> ops = {ReduceOp::kSum, ReduceOp::kProd, ReduceOp::kMin,
                               ReduceOp::kMax};
  if (IsFloatingPoint(dtype)) ops.push_back(ReduceOp::kAvg);
  return ops;
}

enum class Mode { kDefault, kRingTinyChunks, kShm, kShmTinySlots };

class CollectivesTest : public ::testing::TestWithParam<std::tuple<int, size_t, Mode>> {
 protected:
  void SetUp() override {
    std::tie(n_, count_, mode_) = GetParam();
    InprocCommOptions options;
    options.size = n_;
    if (mode_ == Mode::kRingTinyChunks) options.algo = {0, 24};  // ring everywhere, 24-B chunks
    options.shm = mode_ == Mode::kShm || mode_ == Mode::kShmTinySlots;
    // The smallest slots (one page) and no one-shot: every op pipelined in many chunks, and
    // allreduce through reduce-scatter + all-gather at every size.
    if (mode_ == Mode::kShmTinySlots) options.shm_params = {4096, 0};
    comms_ = NewInprocCommunicators(options);
  }

  // Runs fn on every rank; fn returns the number of wrong elements it saw.
  void Run(const std::string& what, const std::function<size_t(int, Communicator&)>& fn) {
    std::atomic<size_t> wrong{0};
    RunRanks(comms_, [&](int r, Communicator& c) { wrong += fn(r, c); });
    EXPECT_EQ(wrong.load(), 0u) << what;
  }

  int n_;
  size_t count_;
  Mode mode_;
  std::vector<std::unique_ptr<Communicator>> comms_;
};

TEST_P(CollectivesTest, AllReduce) {
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : OpsFor(dtype)) {
      for (bool in_place : {false, true}) {
        Run(absl::StrCat(DTypeName(dtype), " ", ReduceOpName(op), in_place ? " in place" : ""),
            [&](int r, Communicator& c) -> size_t {
              Buffer in(dtype, count_), out(dtype, count_);
              for (size_t i = 0; i < count_; ++i) in.Set(i, Value(op, r, i));
              Buffer& dst = in_place ? in : out;
              absl::Status s = c.AllReduce(in.tensor(), dst.tensor(), op)->Wait();
              if (!s.ok()) ADD_FAILURE() << s;
              const Expected want(dtype, kPeriod, [&](size_t i) { return Reference(op, n_, i); });
              const double bound = Bound(dtype, op);
              size_t wrong = 0;
              for (size_t i = 0; i < count_; ++i) wrong += !Matches(bound, dst.Get(i), want[i]);
              return wrong;
            });
      }
    }
  }
}

TEST_P(CollectivesTest, ReduceScatter) {
  const size_t block = (count_ + n_ - 1) / n_;
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : OpsFor(dtype)) {
      Run(absl::StrCat(DTypeName(dtype), " ", ReduceOpName(op)),
          [&](int r, Communicator& c) -> size_t {
            Buffer in(dtype, block * n_), out(dtype, block);
            for (size_t i = 0; i < block * n_; ++i) in.Set(i, Value(op, r, i));
            absl::Status s = c.ReduceScatter(in.tensor(), out.tensor(), op)->Wait();
            if (!s.ok()) ADD_FAILURE() << s;
            const Expected want(dtype, kPeriod, [&](size_t i) { return Reference(op, n_, i); });
            const double bound = Bound(dtype, op);
            size_t wrong = 0;
            for (size_t j = 0; j < block; ++j) {
              wrong += !Matches(bound, out.Get(j), want[r * block + j]);
            }
            return wrong;
          });
    }
  }
}

TEST_P(CollectivesTest, AllGather) {
  const size_t block = (count_ + n_ - 1) / n_;
  for (DType dtype : kAllDTypes) {
    for (bool in_place : {false, true}) {
      Run(absl::StrCat(DTypeName(dtype), in_place ? " in place" : ""),
          [&](int r, Communicator& c) -> size_t {
            Buffer out(dtype, block * n_), in(dtype, block);
            for (size_t j = 0; j < block; ++j) {
              in.Set(j, Value(ReduceOp::kSum, r, j));
              if (in_place) out.Set(r * block + j, Value(ReduceOp::kSum, r, j));
            }
            Tensor src = in_place ? Tensor(out.bytes.data() + r * block * DTypeSize(dtype),
                                           dtype, {static_cast<int64_t>(block)})
                                  : in.tensor();
            absl::Status s = c.AllGather(src, out.tensor())->Wait();
            if (!s.ok()) ADD_FAILURE() << s;
            size_t wrong = 0;
            for (int p = 0; p < n_; ++p) {
              const Expected want(dtype, kPeriod,
                                  [&](size_t j) { return Value(ReduceOp::kSum, p, j); });
              for (size_t j = 0; j < block; ++j) wrong += out.Get(p * block + j) != want[j];
            }
            return wrong;
          });
    }
  }
}

TEST_P(CollectivesTest, Broadcast) {
  for (DType dtype : kAllDTypes) {
    for (int root : {0, n_ - 1, n_ / 2}) {
      Run(absl::StrCat(DTypeName(dtype), " root ", root), [&](int r, Communicator& c) -> size_t {
        Buffer buf(dtype, count_);
        for (size_t i = 0; i < count_; ++i) buf.Set(i, r == root ? Value(ReduceOp::kSum, r, i) : 0);
        absl::Status s = c.Broadcast(buf.tensor(), root)->Wait();
        if (!s.ok()) ADD_FAILURE() << s;
        const Expected want(dtype, kPeriod,
                            [&](size_t i) { return Value(ReduceOp::kSum, root, i); });
        size_t wrong = 0;
        for (size_t i = 0; i < count_; ++i) wrong += buf.Get(i) != want[i];
        return wrong;
      });
    }
  }
}

TEST_P(CollectivesTest, Reduce) {
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : OpsFor(dtype)) {
      const int root = n_ / 2;
      Run(absl::StrCat(DTypeName(dtype), " ", ReduceOpName(op)),
          [&](int r, Communicator& c) -> size_t {
            Buffer in(dtype, count_), out(dtype, count_);
            for (size_t i = 0; i < count_; ++i) in.Set(i, Value(op, r, i));
            absl::Status s = c.Reduce(in.tensor(), out.tensor(), op, root)->Wait();
            if (!s.ok()) ADD_FAILURE() << s;
            if (r != root) return 0;
            const Expected want(dtype, kPeriod, [&](size_t i) { return Reference(op, n_, i); });
            const double bound = Bound(dtype, op);
            size_t wrong = 0;
            for (size_t i = 0; i < count_; ++i) wrong += !Matches(bound, out.Get(i), want[i]);
            return wrong;
          });
    }
  }
}

TEST_P(CollectivesTest, AllToAll) {
  const size_t block = (count_ + n_ - 1) / n_;
  for (DType dtype : kAllDTypes) {
    for (bool in_place : {false, true}) {
      Run(absl::StrCat(DTypeName(dtype), in_place ? " in place" : ""),
          [&](int r, Communicator& c) -> size_t {
            Buffer in(dtype, block * n_), out(dtype, block * n_);
            // Block j of rank r's input is meant for rank j.
            auto v = [&](int from, int to, size_t k) {  // repeats every 100 in k
              return static_cast<double>((from * 31 + to * 7 + k) % 100);
            };
            for (int j = 0; j < n_; ++j) {
              for (size_t k = 0; k < block; ++k) in.Set(j * block + k, v(r, j, k));
            }
            Buffer& dst = in_place ? in : out;
            absl::Status s = c.AllToAll(in.tensor(), dst.tensor())->Wait();
            if (!s.ok()) ADD_FAILURE() << s;
            size_t wrong = 0;
            for (int i = 0; i < n_; ++i) {
              const Expected want(dtype, 100, [&](size_t k) { return v(i, r, k); });
              for (size_t k = 0; k < block; ++k) wrong += dst.Get(i * block + k) != want[k];
            }
            return wrong;
          });
    }
  }
}

TEST_P(CollectivesTest, BarrierAndSendRecvRing) {
  if (n_ == 1) GTEST_SKIP() << "point-to-point needs two ranks";
  for (DType dtype : {DType::kF32, DType::kI8, DType::kBF16}) {
    Run(DTypeName(dtype).data(), [&](int r, Communicator& c) -> size_t {
      if (!c.Barrier()->Wait().ok()) ADD_FAILURE() << "barrier";
      // Everyone sends to the right, then receives from the left: sends before receives on
      // every rank must not deadlock, whatever the size.
      Buffer out(dtype, count_), in(dtype, count_);
      for (size_t i = 0; i < count_; ++i) out.Set(i, Value(ReduceOp::kSum, r, i));
      auto send = c.Send(out.tensor(), (r + 1) % n_, 5);
      auto recv = c.Recv(in.tensor(), (r + n_ - 1) % n_, 5);
      absl::Status s1 = send->Wait(), s2 = recv->Wait();
      if (!s1.ok() || !s2.ok()) ADD_FAILURE() << s1 << " " << s2;
      size_t wrong = 0;
      const int left = (r + n_ - 1) % n_;
      const Expected want(dtype, kPeriod, [&](size_t i) { return Value(ReduceOp::kSum, left, i); });
      for (size_t i = 0; i < count_; ++i) wrong += in.Get(i) != want[i];
      return wrong;
    });
  }
}

std::string Name(const ::testing::TestParamInfo<std::tuple<int, size_t, Mode>>& info) {
  const char* mode[] = {"", "_ring", "_shm", "_shm_tiny_slots"};
  return absl::StrCat("world", std::get<0>(info.param), "_count", std::get<1>(info.param),
                      mode[static_cast<int>(std::get<2>(info.param))]);
}

INSTANTIATE_TEST_SUITE_P(All, CollectivesTest,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4, 7),
                                            ::testing::Values(0, 1, 7, 1000, kLargeCount),
                                            ::testing::Values(Mode::kDefault)),
                         Name);
// The bandwidth algorithms at counts where the default would pick the latency ones, with
// chunks so small that every block is pipelined in several pieces.
INSTANTIATE_TEST_SUITE_P(Ring, CollectivesTest,
                         ::testing::Combine(::testing::Values(2, 3, 4, 7),
                                            ::testing::Values(1, 7, 1000),
                                            ::testing::Values(Mode::kRingTinyChunks)),
                         Name);
// The intra-host shared-memory engine (the default for processes on one host): world sizes
// 1-8, one-shot (small) and reduce-scatter + all-gather (70001 elements: above the one-shot
// size in every dtype but i8/u8). The pipelining over many chunks is covered by the
// page-sized slots below.
INSTANTIATE_TEST_SUITE_P(Shm, CollectivesTest,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4, 5, 6, 7, 8),
                                            ::testing::Values(0, 1, 7, 1000, 70001),
                                            ::testing::Values(Mode::kShm)),
                         Name);
// Page-sized slots: odd counts split over many chunks, portions of every size (empty too).
INSTANTIATE_TEST_SUITE_P(ShmTinySlots, CollectivesTest,
                         ::testing::Combine(::testing::Values(2, 3, 5, 8),
                                            ::testing::Values(1, 7, 1000, 5001),
                                            ::testing::Values(Mode::kShmTinySlots)),
                         Name);

}  // namespace
}  // namespace trident
