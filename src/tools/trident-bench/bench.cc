#include "bench.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/cuda.h"
#include "common/host_memory.h"
#include "common/status_macros.h"
#include "data.h"

namespace trident::bench {
namespace {

constexpr Collective kAllCollectives[] = {
    Collective::kAllReduce, Collective::kReduceScatter, Collective::kAllGather,
    Collective::kBroadcast, Collective::kReduce,        Collective::kAllToAll,
    Collective::kSendRecv,  Collective::kBarrier};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Element counts of one size.
struct Layout {
  int64_t count = 0;  // of the full buffer, as reported
  int64_t in = 0;     // elements of the input tensor (broadcast: the one buffer)
  int64_t out = 0;    // elements of the output tensor (0: none)
  int64_t block = 0;  // per-rank block of the blocked collectives
};

Layout LayoutFor(Collective c, int64_t bytes, DType dtype, int n) {
  const int64_t elems = std::max<int64_t>(bytes / static_cast<int64_t>(DTypeSize(dtype)), 1);
  Layout l;
  switch (c) {
    case Collective::kReduceScatter:
    case Collective::kAllGather:
    case Collective::kAllToAll:
      l.block = std::max<int64_t>(elems / n, 1);
      l.count = l.block * n;
      l.in = c == Collective::kAllGather ? l.block : l.count;
      l.out = c == Collective::kReduceScatter ? l.block : l.count;
      break;
    case Collective::kAllReduce:
    case Collective::kReduce:
    case Collective::kSendRecv:
      l.count = l.in = l.out = elems;
      break;
    case Collective::kBroadcast:
      l.count = l.in = elems;
      break;
    case Collective::kBarrier:
      break;
  }
  return l;
}

// A buffer from AllocateHostMemory (huge pages where possible, as a training framework's
// caching allocator would hand out), touched once at allocation so that first-touch page
// faults (about 1 GB/s on the development VM) stay out of every measurement. With a CUDA
// device the op's buffer is device memory and the host memory is its mirror for --check.
// With `heap` (CPU only), plain heap memory instead (4 KiB pages, what a framework's tensors
// usually are), zeroed, so touched, as well.
class Buffer {
 public:
  Buffer(size_t bytes, int cuda_device, bool heap = false) {
    if (bytes == 0) return;
    if (heap && cuda_device < 0) {
      heap_.assign(bytes, 0);
      return;
    }
    host_ = AllocateHostMemory(bytes);
    std::memset(host_.get(), 0, bytes);
    if (cuda_device >= 0) {
      auto dev = cuda::DeviceBuffer::Allocate(bytes, cuda_device);
      TRIDENT_CHECK(dev.ok()) << dev.status();
      dev_ = std::move(*dev);
      TRIDENT_CHECK(cuda::CopyToDevice(dev_->data(), host_.get(), bytes).ok());
    }
  }
  void* data() const { return dev_ ? dev_->data() : host(); }  // what the op gets
  void* host() const {
    return heap_.empty() ? static_cast<void*>(host_.get()) : const_cast<uint8_t*>(heap_.data());
  }
  absl::Status ToDevice(size_t bytes) {
    return dev_ ? cuda::CopyToDevice(dev_->data(), host_.get(), bytes) : absl::OkStatus();
  }
  absl::Status ToHost(size_t bytes) {
    return dev_ ? cuda::CopyToHost(host_.get(), dev_->data(), bytes) : absl::OkStatus();
  }

 private:
  HostMemory host_;
  std::vector<uint8_t> heap_;
  std::unique_ptr<cuda::DeviceBuffer> dev_;
};

class Runner {
 public:
  Runner(Communicator& comm, const Config& config)
      : comm_(comm),
        config_(config),
        n_(comm.size()),
        rank_(comm.rank()),
        data_(config.dtype, config.reduce, comm.size()) {
    options_.timeout = config.timeout;
    Layout max = LayoutFor(config.collective, config.max_bytes, config.dtype, n_);
    const size_t es = DTypeSize(config.dtype);
    in_ = std::make_unique<Buffer>(max.in * es, config.cuda_device, config.heap);
    if (!(config.in_place && config.collective == Collective::kAllReduce)) {
      out_ = std::make_unique<Buffer>(max.out * es, config.cuda_device, config.heap);
    }
  }

  absl::Status Run(const std::function<void(const Row&)>& on_row) {
    if (config_.collective == Collective::kBarrier) return RunSize(0, on_row);
    for (int64_t bytes :
         MeasuredSizes(config_.collective, config_.dtype, n_, config_.min_bytes, config_.max_bytes)) {
      RETURN_IF_ERROR(RunSize(bytes, on_row));
    }
    return absl::OkStatus();
  }

 private:
  void* out_data() const { return out_ ? out_->data() : in_->data(); }

  absl::Status RunSize(int64_t bytes, const std::function<void(const Row&)>& on_row) {
    layout_ = LayoutFor(config_.collective, bytes, config_.dtype, n_);
    const int64_t reported_bytes =
        layout_.count * static_cast<int64_t>(DTypeSize(config_.dtype));
    auto context = [&](absl::string_view phase) {
      return absl::StrCat(CollectiveName(config_.collective), " of ", reported_bytes,
                          " bytes (", phase, ")");
    };

    int64_t wrong = -1;
    if (config_.check) {
      absl::Status s = Fill();
      if (s.ok()) s = CallOnce();
      if (!s.ok()) return Annotate(s, context("checked call"));
      absl::StatusOr<int64_t> counted = CountWrong();
      if (!counted.ok()) return Annotate(counted.status(), context("reading the result"));
      wrong = *counted;
      if (config_.in_place && config_.collective == Collective::kAllReduce) {
        // Repeated in-place reductions of the test data would grow without bound.
        FillConstant(in_->host(), layout_.in, config_.reduce == ReduceOp::kProd ? 1 : 0);
        s = in_->ToDevice(layout_.in * DTypeSize(config_.dtype));
        if (!s.ok()) return Annotate(s, context("resetting the input"));
      }
    }

    // Warm-up; when the count is adaptive it also estimates the time of one call (at least
    // one call is made for that). The fastest warm-up call is the estimate: the first call
    // of a run can include connection setup, which would make the count far too small.
    const int warmup = (config_.iters == 0 && config_.warmup == 0) ? 1 : config_.warmup;
    double per_call = 0;
    for (int i = 0; i < warmup; ++i) {
      const double t0 = Now();
      absl::Status s = CallOnce();
      if (!s.ok()) return Annotate(s, context(absl::StrCat("warm-up call ", i)));
      const double t = Now() - t0;
      per_call = i == 0 ? t : std::min(per_call, t);
    }
    int iters = config_.iters;
    if (iters == 0) {
      // Every rank must run the same number of calls: agree on the slowest estimate.
      auto est = MaxOverRanks({per_call});
      if (!est.ok()) return Annotate(est.status(), context("agreeing on the iteration count"));
      iters = AdaptiveIters((*est)[0]);
    }

    absl::Status s = Wait(comm_.Barrier(options_));
    if (!s.ok()) return Annotate(s, context("barrier before the timed loop"));
    const double start = Now();
    for (int i = 0; i < iters; ++i) {
      s = CallOnce();
      if (!s.ok()) return Annotate(s, context(absl::StrCat("timed call ", i)));
    }
    const double mean = (Now() - start) / iters;

    auto maxes = MaxOverRanks({mean, static_cast<double>(wrong)});
    if (!maxes.ok()) return Annotate(maxes.status(), context("collecting the results"));
    Row row;
    row.bytes = reported_bytes;
    row.count = layout_.count;
    row.iters = iters;
    row.seconds = (*maxes)[0];
    row.wrong = static_cast<int64_t>((*maxes)[1]);
    if (row.seconds > 0) {
      row.algbw_gbps = static_cast<double>(row.bytes) / row.seconds / 1e9;
      row.busbw_gbps = row.algbw_gbps * BusFactor(config_.collective, n_);
    }
    on_row(row);
    return absl::OkStatus();
  }

  int AdaptiveIters(double seconds_per_call) const {
    double iters = seconds_per_call > 0 ? config_.target_seconds / seconds_per_call
                                        : static_cast<double>(config_.max_iters);
    return static_cast<int>(std::clamp(iters, static_cast<double>(config_.min_iters),
                                       static_cast<double>(config_.max_iters)));
  }

  static absl::Status Wait(const std::shared_ptr<Work>& work) {
    TRIDENT_CHECK(work != nullptr) << "the communicator returned no Work";
    return work->Wait();
  }

  Device device() const {
    return config_.cuda_device >= 0 ? Device::Cuda(config_.cuda_device) : Device::Cpu();
  }
  Tensor In() const { return Tensor(in_->data(), config_.dtype, {layout_.in}, device()); }
  Tensor Out() const {
    return Tensor(out_data(), config_.dtype, {layout_.out}, device());
  }

  absl::Status CallOnce() {
    switch (config_.collective) {
      case Collective::kAllReduce:
        return Wait(comm_.AllReduce(In(), Out(), config_.reduce, options_));
      case Collective::kReduceScatter:
        return Wait(comm_.ReduceScatter(In(), Out(), config_.reduce, options_));
      case Collective::kAllGather:
        return Wait(comm_.AllGather(In(), Out(), options_));
      case Collective::kBroadcast:
        return Wait(comm_.Broadcast(In(), config_.root, options_));
      case Collective::kReduce:
        return Wait(comm_.Reduce(In(), Out(), config_.reduce, config_.root, options_));
      case Collective::kAllToAll:
        return Wait(comm_.AllToAll(In(), Out(), options_));
      case Collective::kSendRecv: {
        // Ring neighbour exchange: send to the next rank, receive from the previous one.
        // Rank 0 receives first and the others send first: on NCCL a Send holds its stream
        // until the peer's Recv runs, so a ring where every rank does the same would deadlock.
        std::shared_ptr<Work> recv, send;
        if (rank_ == 0) recv = comm_.Recv(Out(), (rank_ - 1 + n_) % n_, /*tag=*/0, options_);
        send = comm_.Send(In(), (rank_ + 1) % n_, /*tag=*/0, options_);
        if (rank_ != 0) recv = comm_.Recv(Out(), (rank_ - 1 + n_) % n_, /*tag=*/0, options_);
        absl::Status s = Wait(send);
        absl::Status r = Wait(recv);
        return s.ok() ? r : s;
      }
      case Collective::kBarrier:
        return Wait(comm_.Barrier(options_));
    }
    return absl::InternalError("unknown collective");
  }

  // Through a buffer on the ops' device: the NCCL backend takes CUDA tensors only.
  absl::StatusOr<std::vector<double>> MaxOverRanks(std::vector<double> values) {
    const size_t bytes = values.size() * sizeof(double);
    Buffer buf(bytes, config_.cuda_device);
    std::memcpy(buf.host(), values.data(), bytes);
    RETURN_IF_ERROR(buf.ToDevice(bytes));
    Tensor t(buf.data(), DType::kF64, {static_cast<int64_t>(values.size())}, device());
    RETURN_IF_ERROR(Wait(comm_.AllReduce(t, t, ReduceOp::kMax, options_)));
    RETURN_IF_ERROR(buf.ToHost(bytes));
    std::memcpy(values.data(), buf.host(), bytes);
    return values;
  }

  void FillConstant(void* base, int64_t count, double value) {
    for (int64_t i = 0; i < count; ++i) StoreElement(base, config_.dtype, i, value);
  }

  // Inputs get the test data; outputs get the sentinel, so that an element the collective
  // failed to write is caught.
  absl::Status Fill() {
    const DType dt = config_.dtype;
    void* in = in_->host();
    switch (config_.collective) {
      case Collective::kAllReduce:
      case Collective::kReduce:
      case Collective::kReduceScatter:
        for (int64_t i = 0; i < layout_.in; ++i) {
          StoreElement(in, dt, i, data_.ReduceInput(rank_, i));
        }
        break;
      case Collective::kAllGather:
        for (int64_t i = 0; i < layout_.in; ++i) {
          StoreElement(in, dt, i, data_.MoveInput(rank_, rank_ * layout_.block + i));
        }
        break;
      case Collective::kAllToAll:
      case Collective::kSendRecv:
        for (int64_t i = 0; i < layout_.in; ++i) {
          StoreElement(in, dt, i, data_.MoveInput(rank_, i));
        }
        break;
      case Collective::kBroadcast:
        for (int64_t i = 0; i < layout_.in; ++i) {
          StoreElement(in, dt, i, rank_ == config_.root ? data_.MoveInput(rank_, i) : kSentinel);
        }
        break;
      case Collective::kBarrier:
        break;
    }
    if (out_) FillConstant(out_->host(), layout_.out, kSentinel);
    const size_t es = DTypeSize(dt);
    RETURN_IF_ERROR(in_->ToDevice(layout_.in * es));
    if (out_) RETURN_IF_ERROR(out_->ToDevice(layout_.out * es));
    return absl::OkStatus();
  }

  double Expected(int64_t k) const {
    const int64_t block = layout_.block;
    switch (config_.collective) {
      case Collective::kAllReduce: return data_.Reduced(k);
      case Collective::kReduce: return rank_ == config_.root ? data_.Reduced(k) : kSentinel;
      case Collective::kReduceScatter: return data_.Reduced(rank_ * block + k);
      case Collective::kAllGather: return data_.MoveInput(static_cast<int>(k / block), k);
      case Collective::kAllToAll:
        return data_.MoveInput(static_cast<int>(k / block), rank_ * block + k % block);
      case Collective::kBroadcast: return data_.MoveInput(config_.root, k);
      case Collective::kSendRecv: return data_.MoveInput((rank_ - 1 + n_) % n_, k);
      case Collective::kBarrier: return 0;
    }
    return 0;
  }

  absl::StatusOr<int64_t> CountWrong() const {
    if (config_.collective == Collective::kBarrier) return 0;
    const bool result_in_in = config_.collective == Collective::kBroadcast ||
                              (config_.in_place && config_.collective == Collective::kAllReduce);
    Buffer& buf = result_in_in ? *in_ : *out_;
    const int64_t n = result_in_in ? layout_.in : layout_.out;
    RETURN_IF_ERROR(buf.ToHost(n * DTypeSize(config_.dtype)));
    const void* result = buf.host();
    int64_t wrong = 0;
    for (int64_t k = 0; k < n; ++k) {
      wrong += !data_.Matches(LoadElement(result, config_.dtype, k), Expected(k));
    }
    return wrong;
  }

  Communicator& comm_;
  const Config& config_;
  const int n_;
  const int rank_;
  const TestData data_;
  OpOptions options_;
  std::unique_ptr<Buffer> in_;
  std::unique_ptr<Buffer> out_;  // null when allreduce is in place
  Layout layout_;
};

}  // namespace

absl::StatusOr<Collective> ParseCollective(absl::string_view name) {
  for (Collective c : kAllCollectives) {
    if (CollectiveName(c) == name) return c;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown op '", name,
      "'; expected allreduce, reducescatter, allgather, broadcast, reduce, alltoall, "
      "sendrecv or barrier"));
}

absl::string_view CollectiveName(Collective c) {
  switch (c) {
    case Collective::kAllReduce: return "allreduce";
    case Collective::kReduceScatter: return "reducescatter";
    case Collective::kAllGather: return "allgather";
    case Collective::kBroadcast: return "broadcast";
    case Collective::kReduce: return "reduce";
    case Collective::kAllToAll: return "alltoall";
    case Collective::kSendRecv: return "sendrecv";
    case Collective::kBarrier: return "barrier";
  }
  return "?";
}

bool Reduces(Collective c) {
  return c == Collective::kAllReduce || c == Collective::kReduceScatter ||
         c == Collective::kReduce;
}

bool HasRoot(Collective c) { return c == Collective::kBroadcast || c == Collective::kReduce; }

double BusFactor(Collective c, int n) {
  switch (c) {
    case Collective::kAllReduce: return 2.0 * (n - 1) / n;
    case Collective::kReduceScatter:
    case Collective::kAllGather:
    case Collective::kAllToAll: return static_cast<double>(n - 1) / n;
    case Collective::kBroadcast:
    case Collective::kReduce:
    case Collective::kSendRecv: return 1.0;
    case Collective::kBarrier: return 0.0;
  }
  return 0.0;
}

absl::StatusOr<int64_t> ParseBytes(absl::string_view text) {
  std::string s = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(text));
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("bad size '", text, "'; expected a number with an optional K, M or G"));
  };
  size_t digits = 0;
  while (digits < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[digits]))) {
    ++digits;
  }
  if (digits == 0) return bad();
  std::string suffix = s.substr(digits);
  if (suffix.size() >= 2 && (suffix.ends_with("IB"))) suffix.resize(suffix.size() - 2);
  else if (suffix.size() >= 2 && suffix.ends_with("B")) suffix.resize(suffix.size() - 1);
  else if (suffix == "B") suffix.clear();
  int shift;
  if (suffix.empty()) shift = 0;
  else if (suffix == "K") shift = 10;
  else if (suffix == "M") shift = 20;
  else if (suffix == "G") shift = 30;
  else return bad();
  int64_t value;
  if (!absl::SimpleAtoi(s.substr(0, digits), &value)) return bad();
  if (value > (INT64_MAX >> shift) >> 1) return bad();
  return value << shift;
}

std::vector<int64_t> SizeRange(int64_t min_bytes, int64_t max_bytes) {
  std::vector<int64_t> sizes;
  for (int64_t s = std::max<int64_t>(min_bytes, 1); s <= max_bytes; s *= 2) sizes.push_back(s);
  return sizes;
}

std::vector<int64_t> MeasuredSizes(Collective c, DType dtype, int n, int64_t min_bytes,
                                   int64_t max_bytes) {
  // Sizes under one element (or one block per rank) round to the same buffer: measure it once.
  std::vector<int64_t> sizes;
  int64_t last_count = -1;
  for (int64_t bytes : SizeRange(min_bytes, max_bytes)) {
    const int64_t count = LayoutFor(c, bytes, dtype, n).count;
    if (count == last_count) continue;
    last_count = count;
    sizes.push_back(bytes);
  }
  return sizes;
}

absl::Status RunBench(Communicator& comm, const Config& config,
                      const std::function<void(const Row&)>& on_row) {
  Runner runner(comm, config);
  return runner.Run(on_row);
}

}  // namespace trident::bench
