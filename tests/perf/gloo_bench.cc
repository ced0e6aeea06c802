// gloo_bench: Gloo's collectives (tcp transport on 127.0.0.1, FileStore rendezvous) timed with
// the conventions of trident-bench, so that tests/perf/compare.py can put them side by side.
//
//   # one process per rank; all share a fresh, empty store directory
//   for r in 0 1; do
//     gloo_bench --rank $r --nproc 2 --store /tmp/gs --op allreduce --algo hd
//                --min-bytes 4K --max-bytes 256M --check &
//   done; wait
//
// Each op in --op gets a fresh gloo context: with 4 ranks, running a legacy algorithm
// (AllreduceRing, ...) on a context slows later new-style calls (gloo::allreduce) on the same
// context by ~100x (research/baselines.md, "Surprises" 1). For the same reason everything
// outside the timed op (agreeing on the iteration count, taking the max time over ranks,
// aligning the ranks) goes through the store, never through a gloo collective.
//
// --algo picks the allreduce implementation:
//   hd            gloo::AllreduceHalvingDoubling (legacy Algorithm), the default: the best
//                 measured on this machine at small sizes and, with 2 ranks, at large ones
//   ring          gloo::allreduce with AllreduceOptions (new-style; UNSPECIFIED = ring)
//   bcube         gloo::allreduce with algorithm BCUBE
//   ring_legacy   gloo::AllreduceRing
//   ring_chunked  gloo::AllreduceRingChunked
// allgather and broadcast use the new-style gloo::allgather / gloo::broadcast (root 0).
// All data is float32; allreduce is in place with gloo::sum<float>.
#include <cinttypes>
#include <memory>
#include <string>
#include <vector>

#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/allreduce_halving_doubling.h"
#include "gloo/allreduce_ring.h"
#include "gloo/allreduce_ring_chunked.h"
#include "gloo/broadcast.h"
#include "gloo/config.h"
#include "gloo/math.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/file_store.h"
#include "gloo/rendezvous/prefix_store.h"
#include "gloo/transport/tcp/device.h"
#include "perf_common.h"

namespace {

constexpr char kUsage[] =
    "usage: gloo_bench --rank R --nproc N --store DIR [--op allreduce,allgather,broadcast]\n"
    "                  [--algo hd|ring|bcube|ring_legacy|ring_chunked] [--min-bytes 4K]\n"
    "                  [--max-bytes 256M] [--iters N] [--warmup 2] [--check]\n"
    "                  [--hostname 127.0.0.1] [--timeout-s 600] [--no-hugepages]\n"
    "R and N default to TRIDENT_RANK / TRIDENT_WORLD_SIZE. DIR must be empty and shared.\n"
    "Buffers from 1 MiB up use transparent huge pages, as trident-bench's do, unless\n"
    "--no-hugepages (plain malloc, as research/baselines.md measured).\n";

struct Options {
  int rank = -1;
  int nproc = -1;
  std::string store_dir;
  std::vector<std::string> ops;
  std::string algo = "hd";
  int64_t min_bytes = 4096;
  int64_t max_bytes = 256 << 20;
  int iters = 0;  // 0: adaptive
  int warmup = 2;
  bool check = false;
  std::string hostname = "127.0.0.1";
  int timeout_s = 600;
  bool huge_pages = true;
};

// Every rank publishes `value` under `key`; returns the max over ranks. Also a barrier.
double StoreMax(gloo::rendezvous::Store& store, const std::string& key, int rank, int n,
                double value) {
  std::vector<char> bytes(sizeof(double));
  std::memcpy(bytes.data(), &value, sizeof(double));
  store.set(key + "/" + std::to_string(rank), bytes);
  std::vector<std::string> keys;
  for (int r = 0; r < n; ++r) keys.push_back(key + "/" + std::to_string(r));
  store.wait(keys, std::chrono::seconds(600));
  double result = value;
  for (const std::string& k : keys) {
    std::vector<char> got = store.get(k);
    if (got.size() != sizeof(double)) perf::Die("bad store value under " + k);
    double v;
    std::memcpy(&v, got.data(), sizeof(double));
    result = std::max(result, v);
  }
  return result;
}

// One op at one size: buffers bound once, call() runs the op once.
class Runner {
 public:
  virtual ~Runner() = default;
  virtual void Call() = 0;
  // Fills the inputs with test data (and the outputs with junk).
  virtual void Fill() = 0;
  // Number of wrong elements after one Call() following Fill().
  virtual int64_t Wrong() = 0;
};

class AllreduceRunner : public Runner {
 public:
  AllreduceRunner(std::shared_ptr<gloo::Context> ctx, const std::string& algo, float* buf,
                  int64_t count, int timeout_s)
      : ctx_(ctx), buf_(buf), count_(count) {
    std::vector<float*> ptrs = {buf};
    if (algo == "hd") {
      legacy_ = std::make_unique<gloo::AllreduceHalvingDoubling<float>>(ctx, ptrs, count);
    } else if (algo == "ring_legacy") {
      legacy_ = std::make_unique<gloo::AllreduceRing<float>>(ctx, ptrs, count);
    } else if (algo == "ring_chunked") {
      legacy_ = std::make_unique<gloo::AllreduceRingChunked<float>>(ctx, ptrs, count);
    } else if (algo == "ring" || algo == "bcube") {
      opts_ = std::make_unique<gloo::AllreduceOptions>(ctx);
      opts_->setOutput(buf, count);
      opts_->setReduceFunction(
          static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
      if (algo == "bcube") opts_->setAlgorithm(gloo::AllreduceOptions::Algorithm::BCUBE);
      opts_->setTimeout(std::chrono::seconds(timeout_s));
    } else {
      perf::Die("unknown --algo " + algo);
    }
  }
  void Call() override {
    if (legacy_) legacy_->run();
    else gloo::allreduce(*opts_);
  }
  void Fill() override {
    for (int64_t i = 0; i < count_; ++i) buf_[i] = perf::Value(ctx_->rank, i);
  }
  int64_t Wrong() override {
    int64_t wrong = 0;
    for (int64_t i = 0; i < count_; ++i) {
      float expected = 0;
      for (int r = 0; r < ctx_->size; ++r) expected += perf::Value(r, i);
      wrong += buf_[i] != expected;
    }
    return wrong;
  }

 private:
  std::shared_ptr<gloo::Context> ctx_;
  float* buf_;
  int64_t count_;
  std::unique_ptr<gloo::Algorithm> legacy_;
  std::unique_ptr<gloo::AllreduceOptions> opts_;
};

class AllgatherRunner : public Runner {
 public:
  AllgatherRunner(std::shared_ptr<gloo::Context> ctx, float* in, float* out, int64_t count,
                  int timeout_s)
      : ctx_(ctx), in_(in), out_(out), count_(count), block_(count / ctx->size), opts_(ctx) {
    opts_.setInput(in, block_);
    opts_.setOutput(out, count);
    opts_.setTimeout(std::chrono::seconds(timeout_s));
  }
  void Call() override { gloo::allgather(opts_); }
  void Fill() override {
    for (int64_t i = 0; i < block_; ++i) in_[i] = perf::Value(ctx_->rank, ctx_->rank * block_ + i);
    for (int64_t i = 0; i < count_; ++i) out_[i] = -1000;
  }
  int64_t Wrong() override {
    int64_t wrong = 0;
    for (int64_t i = 0; i < count_; ++i) wrong += out_[i] != perf::Value(int(i / block_), i);
    return wrong;
  }

 private:
  std::shared_ptr<gloo::Context> ctx_;
  float* in_;
  float* out_;
  int64_t count_, block_;
  gloo::AllgatherOptions opts_;
};

class BroadcastRunner : public Runner {
 public:
  BroadcastRunner(std::shared_ptr<gloo::Context> ctx, float* buf, int64_t count, int timeout_s)
      : ctx_(ctx), buf_(buf), count_(count), opts_(ctx) {
    opts_.setOutput(buf, count);
    opts_.setRoot(0);
    opts_.setTimeout(std::chrono::seconds(timeout_s));
  }
  void Call() override { gloo::broadcast(opts_); }
  void Fill() override {
    for (int64_t i = 0; i < count_; ++i) buf_[i] = ctx_->rank == 0 ? perf::Value(0, i) : -1000;
  }
  int64_t Wrong() override {
    int64_t wrong = 0;
    for (int64_t i = 0; i < count_; ++i) wrong += buf_[i] != perf::Value(0, i);
    return wrong;
  }

 private:
  std::shared_ptr<gloo::Context> ctx_;
  float* buf_;
  int64_t count_;
  gloo::BroadcastOptions opts_;
};

Options ParseOptions(int argc, char** argv) {
  perf::Args args(argc, argv);
  if (args.Has("--help") || args.Has("-h")) {
    std::fputs(kUsage, stdout);
    std::exit(0);
  }
  Options o;
  const char* env_rank = std::getenv("TRIDENT_RANK");
  const char* env_size = std::getenv("TRIDENT_WORLD_SIZE");
  o.rank = std::atoi(args.Get("--rank", env_rank ? env_rank : "-1").c_str());
  o.nproc = std::atoi(args.Get("--nproc", env_size ? env_size : "-1").c_str());
  o.store_dir = args.Get("--store", "");
  o.ops = perf::SplitComma(args.Get("--op", "allreduce,allgather,broadcast"));
  o.algo = args.Get("--algo", o.algo);
  o.min_bytes = perf::ParseBytes(args.Get("--min-bytes", "4K"));
  o.max_bytes = perf::ParseBytes(args.Get("--max-bytes", "256M"));
  o.iters = std::atoi(args.Get("--iters", "0").c_str());
  o.warmup = std::atoi(args.Get("--warmup", "2").c_str());
  o.check = args.Has("--check");
  o.hostname = args.Get("--hostname", o.hostname);
  o.timeout_s = std::atoi(args.Get("--timeout-s", "600").c_str());
  o.huge_pages = !args.Has("--no-hugepages");
  if (o.nproc < 1 || o.rank < 0 || o.rank >= o.nproc) perf::Die(std::string("bad --rank/--nproc\n") + kUsage);
  if (o.store_dir.empty()) perf::Die(std::string("--store DIR is required\n") + kUsage);
  if (o.min_bytes < 1 || o.max_bytes < o.min_bytes) perf::Die("bad --min-bytes/--max-bytes");
  for (const std::string& op : o.ops) {
    if (op != "allreduce" && op != "allgather" && op != "broadcast") perf::Die("unknown op " + op);
  }
  return o;
}

int RunOp(const Options& o, const std::string& op, int op_index,
          std::shared_ptr<gloo::transport::Device>& device,
          gloo::rendezvous::FileStore& file_store) {
  // A fresh context (and key space) per op.
  std::string prefix = "op" + std::to_string(op_index) + "-" + op;
  gloo::rendezvous::PrefixStore store(prefix, file_store);
  auto ctx = std::make_shared<gloo::rendezvous::Context>(o.rank, o.nproc);
  ctx->setTimeout(std::chrono::seconds(o.timeout_s));
  ctx->connectFullMesh(store, device);

  const int n = o.nproc;
  std::string algo = op == "allreduce" ? o.algo : "default";
  if (o.rank == 0) {
    std::printf("# gloo_bench %s: world %d, transport tcp (%s), algo %s, gloo %d.%d.%d\n",
                op.c_str(), n, o.hostname.c_str(), algo.c_str(), GLOO_VERSION_MAJOR,
                GLOO_VERSION_MINOR, GLOO_VERSION_PATCH);
    perf::PrintSettingsAndColumns(o.iters, o.warmup, o.check, o.huge_pages);
  }
  // Buffers for the largest size, touched once, reused for every size (first-touch costs
  // about 1 GB/s on this VM and must stay out of the timed loop).
  int64_t max_count = perf::CountFor(op, o.max_bytes, n);
  perf::Buffer a(max_count, o.huge_pages);
  perf::Buffer b(op == "allgather" ? max_count : 0, o.huge_pages);

  int64_t total_wrong = 0;
  for (int64_t bytes : perf::Sizes(o.min_bytes, o.max_bytes)) {
    int64_t count = perf::CountFor(op, bytes, n);
    std::unique_ptr<Runner> runner;
    if (op == "allreduce") runner = std::make_unique<AllreduceRunner>(ctx, algo, a.data(), count, o.timeout_s);
    else if (op == "allgather") runner = std::make_unique<AllgatherRunner>(ctx, b.data(), a.data(), count, o.timeout_s);
    else runner = std::make_unique<BroadcastRunner>(ctx, a.data(), count, o.timeout_s);
    std::string key = std::to_string(bytes);

    int64_t wrong = -1;
    if (o.check) {
      runner->Fill();
      runner->Call();
      wrong = static_cast<int64_t>(
          StoreMax(store, "wrong/" + key, o.rank, n, double(runner->Wrong())));
      total_wrong += wrong;
      // Back to zeros so that repeated in-place sums stay finite.
      std::fill(a.data(), a.data() + count, 0.0f);
    }
    // Warm-up, which also estimates the time of one call when iters is adaptive.
    int warmup = (o.iters == 0 && o.warmup == 0) ? 1 : o.warmup;
    double per_call = 0;  // the fastest warm-up call, as in trident-bench
    for (int i = 0; i < warmup; ++i) {
      double t0 = perf::Now();
      runner->Call();
      double t = perf::Now() - t0;
      per_call = i == 0 ? t : std::min(per_call, t);
    }
    int iters = o.iters;
    if (iters == 0) {
      iters = perf::AdaptiveIters(StoreMax(store, "est/" + key, o.rank, n, per_call));
    } else {
      StoreMax(store, "est/" + key, o.rank, n, 0);  // a barrier
    }
    runner->Call();  // aligns the ranks after the (coarse) store barrier
    double start = perf::Now();
    for (int i = 0; i < iters; ++i) runner->Call();
    double mean = (perf::Now() - start) / iters;
    double time = StoreMax(store, "time/" + key, o.rank, n, mean);
    if (o.rank == 0) {
      perf::PrintRow(count * 4, count, op == "allreduce" ? "sum" : "-",
                     op == "broadcast" ? "0" : "-", iters, time, perf::BusFactor(op, n), wrong);
    }
  }
  if (total_wrong > 0) {
    std::fprintf(stderr, "gloo_bench %s: %" PRId64 " wrong elements\n", op.c_str(), total_wrong);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = ParseOptions(argc, argv);
  gloo::transport::tcp::attr attr;
  attr.hostname = o.hostname;
  auto device = gloo::transport::tcp::CreateDevice(attr);
  gloo::rendezvous::FileStore store(o.store_dir);
  int rc = 0;
  try {
    for (size_t i = 0; i < o.ops.size(); ++i) {
      rc |= RunOp(o, o.ops[i], static_cast<int>(i), device, store);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gloo_bench rank %d: %s\n", o.rank, e.what());
    return 1;
  }
  return rc;
}
