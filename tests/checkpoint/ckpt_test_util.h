// Helpers for the checkpoint tests: tensors whose every element is a function of (seed,
// tensor name, global index), so that any slice of any layout can be generated and checked
// byte for byte; scratch directories; a file system that injects faults.
#ifndef TRIDENT_TESTS_CHECKPOINT_CKPT_TEST_UTIL_H_
#define TRIDENT_TESTS_CHECKPOINT_CKPT_TEST_UTIL_H_

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "checkpoint/file_system.h"
#include "checkpoint/format.h"
#include "common/status_macros.h"
#include "comm/host/inproc.h"
#include "trident/checkpoint.h"

namespace trident::testing {

inline uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

inline uint64_t NameHash(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

// The bytes of `box` of a global tensor, row-major: element g holds Mix(seed, name, g).
inline std::vector<char> SliceBytes(uint64_t seed, const std::string& name, DType dtype,
                                    const Tensor::Shape& global, const ckpt::Box& box) {
  const size_t elem = DTypeSize(dtype);
  const int64_t n = ckpt::Volume(box.shape);
  std::vector<char> out(static_cast<size_t>(n) * elem);
  const size_t nd = box.shape.size();
  std::vector<int64_t> idx(nd, 0);
  const uint64_t base = Mix(seed ^ NameHash(name));
  for (int64_t i = 0; i < n; ++i) {
    int64_t g = 0;
    for (size_t d = 0; d < nd; ++d) g = g * global[d] + box.offset[d] + idx[d];
    const uint64_t v = Mix(base + static_cast<uint64_t>(g));
    std::memcpy(out.data() + static_cast<size_t>(i) * elem, &v, elem);
    for (size_t d = nd; d > 0; --d) {
      if (++idx[d - 1] < box.shape[d - 1]) break;
      idx[d - 1] = 0;
    }
  }
  return out;
}

// A tensor of a state with its own memory.
struct OwnedTensor {
  std::string name;
  DType dtype;
  Tensor::Shape global;
  ckpt::Box box;
  int replica_index = 0;
  int replica_count = 1;
  std::vector<char> bytes;

  NamedTensor View() {
    NamedTensor nt;
    nt.name = name;
    nt.tensor = Tensor(bytes.data(), dtype, box.shape);
    nt.placement.global_shape = global;
    nt.placement.offset = box.offset;
    nt.placement.replica_index = replica_index;
    nt.placement.replica_count = replica_count;
    return nt;
  }
};

inline OwnedTensor MakeTensor(uint64_t seed, const std::string& name, DType dtype,
                              Tensor::Shape global, ckpt::Box box = {}) {
  if (box.shape.empty() && !global.empty()) box = {Tensor::Shape(global.size(), 0), global};
  OwnedTensor t{name, dtype, global, box, 0, 1, SliceBytes(seed, name, dtype, global, box)};
  return t;
}

inline CheckpointState StateOf(std::vector<OwnedTensor>& tensors, std::string metadata = "") {
  CheckpointState state;
  for (OwnedTensor& t : tensors) state.tensors.push_back(t.View());
  state.metadata = std::move(metadata);
  return state;
}

// Loads `box` of a tensor and compares it with what seed generates. Returns "" or a message.
inline std::string LoadAndCompare(const std::string& dir, int64_t step, uint64_t seed,
                                  const std::string& name, DType dtype,
                                  const Tensor::Shape& global, const ckpt::Box& box) {
  std::vector<char> got(static_cast<size_t>(ckpt::Volume(box.shape)) * DTypeSize(dtype) + 1, 0x5a);
  TensorRequest req{name, Tensor(got.data(), dtype, box.shape), box.offset, global};
  auto result = LoadCheckpoint(dir, step, {&req, 1});
  if (!result.ok()) return result.status().ToString();
  got.pop_back();
  if (got != SliceBytes(seed, name, dtype, global, box)) {
    return "bytes of " + name + " differ at offset " + ckpt::ShapeString(box.offset);
  }
  return "";
}

// A fresh directory under $TEST_TMPDIR or /tmp, removed at destruction.
class ScratchDir {
 public:
  ScratchDir() {
    const char* base = getenv("TEST_TMPDIR");
    std::string tmpl = std::string(base ? base : "/tmp") + "/trident-ckpt-XXXXXX";
    path_ = mkdtemp(tmpl.data());
  }
  ~ScratchDir() { (void)PosixFileSystem()->RemoveAll(path_); }
  const std::string& path() const { return path_; }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// What every checkpoint test's options start from: its directory and communicator and a
// staging budget; each test then sets what it tests.
inline CheckpointOptions TestOptions(const std::string& dir, std::shared_ptr<Communicator> comm,
                                     size_t memory_budget_bytes = 16 << 20) {
  CheckpointOptions o;
  o.dir = dir;
  o.comm = std::move(comm);
  o.memory_budget_bytes = memory_budget_bytes;
  return o;
}

// Ranks as threads over in-process communicators, each handed its own (shared) one: the
// setup of every multi-rank checkpoint test.
inline void RunCkptRanks(int n,
                         const std::function<void(int, std::shared_ptr<Communicator>)>& fn) {
  InprocCommOptions options;
  options.size = n;
  options.timeout = absl::Seconds(60);
  std::vector<std::shared_ptr<Communicator>> comms;
  for (auto& c : NewInprocCommunicators(options)) comms.push_back(std::move(c));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { fn(r, comms[r]); });
  for (auto& t : threads) t.join();
}

// Forwards to the real file system; fails writes with ENOSPC while `full` is set, and holds
// writes at a gate while `gate_closed` is set (so a test can keep a save persisting).
class FaultFileSystem : public FileSystemWrapper {
 public:
  FaultFileSystem() : FileSystemWrapper(PosixFileSystem()) {}
  std::atomic<bool> full{false};
  std::atomic<int64_t> writes{0};

  // Every call that changes what is durable, in order: "write P", "sync P", "syncdir D",
  // "rename A B" (paths as given).
  std::vector<std::string> Log() {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }
  void Record(std::string entry) {
    std::lock_guard<std::mutex> lock(mu_);
    log_.push_back(std::move(entry));
  }

  void CloseGate() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_closed_ = true;
  }
  void OpenGate() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      gate_closed_ = false;
    }
    cv_.notify_all();
  }
  // Waits until a write is held at the gate.
  void WaitForHeldWrite() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return held_ > 0; });
  }

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                bool direct) override {
    ASSIGN_OR_RETURN(auto file, target().NewWritableFile(path, direct));
    return std::unique_ptr<WritableFile>(new File(this, path, std::move(file)));
  }
  absl::Status SyncDir(const std::string& path) override {
    Record("syncdir " + path);
    return target().SyncDir(path);
  }
  absl::Status Rename(const std::string& from, const std::string& to) override {
    Record("rename " + from + " " + to);
    return target().Rename(from, to);
  }
  absl::Status Exchange(const std::string& a, const std::string& b) override {
    Record("exchange " + a + " " + b);
    return target().Exchange(a, b);
  }

 private:
  class File : public WritableFile {
   public:
    File(FaultFileSystem* fs, std::string path, std::unique_ptr<WritableFile> base)
        : fs_(fs), path_(std::move(path)), base_(std::move(base)) {}
    bool direct() const override { return base_->direct(); }
    absl::Status Write(uint64_t offset, const void* data, size_t n) override {
      fs_->Gate();
      ++fs_->writes;
      if (fs_->full) return ErrnoToStatus(ENOSPC, "write(" + path_ + ")");
      fs_->Record("write " + path_);
      return base_->Write(offset, data, n);
    }
    absl::Status Truncate(uint64_t size) override { return base_->Truncate(size); }
    absl::Status Sync() override {
      fs_->Record("sync " + path_);
      return base_->Sync();
    }
    absl::Status Close() override { return base_->Close(); }

   private:
    FaultFileSystem* fs_;
    std::string path_;
    std::unique_ptr<WritableFile> base_;
  };

  void Gate() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!gate_closed_) return;
    ++held_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !gate_closed_; });
    --held_;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool gate_closed_ = false;
  int held_ = 0;
  std::vector<std::string> log_;
};

}  // namespace trident::testing

#endif  // TRIDENT_TESTS_CHECKPOINT_CKPT_TEST_UTIL_H_
