// Uses only the installed public headers: a store, a one-rank world communicator, and a
// checkpoint saved and loaded back.
#include <stdlib.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "trident/checkpoint.h"
#include "trident/communicator.h"
#include "trident/file_system.h"
#include "trident/store.h"
#include "trident/version.h"

// A host's subclass of a Trident interface: against libtrident.so it needs the base class's
// vtable and type information exported (src/libtrident.map), and the engine calls back into
// it across the library boundary.
class CountingFileSystem : public trident::FileSystemWrapper {
 public:
  CountingFileSystem() : FileSystemWrapper(trident::PosixFileSystem()) {}
  absl::Status Rename(const std::string& from, const std::string& to) override {
    ++renames;
    return FileSystemWrapper::Rename(from, to);
  }
  int renames = 0;
};

int main() {
  // The headers and the library are the same release.
  if (trident::VersionCode() != TRIDENT_VERSION_CODE) {
    std::fprintf(stderr, "consumer: headers %d, library %s\n", TRIDENT_VERSION_CODE,
                 trident::Version());
    return 1;
  }
  std::shared_ptr<trident::Store> store = trident::NewMemoryStore();
  trident::HostCommOptions options;
  options.rank = 0;
  options.world_size = 1;
  options.store = store;
  options.provider = "shm";
  auto comm = trident::CreateHostCommunicator(options);
  if (!comm.ok()) {
    std::fprintf(stderr, "consumer: %s\n", comm.status().ToString().c_str());
    return 1;
  }
  std::vector<float> v = {1, 2, 3};
  auto t = trident::Tensor::Of(v.data(), 3);
  absl::Status s = (*comm)->AllReduce(t, t, trident::ReduceOp::kSum)->Wait();
  if (!s.ok() || v[2] != 3) {
    std::fprintf(stderr, "consumer: allreduce: %s\n", s.ToString().c_str());
    return 1;
  }

  // A checkpoint through a communicator of its own.
  char dir_template[] = "/tmp/trident-consumer-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  auto ckpt_comm = (*comm)->Split(0, 0);
  if (!ckpt_comm.ok()) {
    std::fprintf(stderr, "consumer: split: %s\n", ckpt_comm.status().ToString().c_str());
    return 1;
  }
  trident::CheckpointOptions ckpt_options;
  ckpt_options.dir = dir;
  ckpt_options.comm = std::move(*ckpt_comm);
  ckpt_options.memory_budget_bytes = 16 << 20;
  auto fs = std::make_shared<CountingFileSystem>();
  ckpt_options.file_system = fs;
  auto engine = trident::CheckpointEngine::Create(std::move(ckpt_options));
  if (!engine.ok()) {
    std::fprintf(stderr, "consumer: checkpoint engine: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  trident::CheckpointState state;
  trident::TensorPlacement half;  // C++17: no designated initializers here
  half.global_shape = {6};
  half.offset = {0};
  state.tensors.push_back({"v", t, half});
  state.metadata = "consumer";
  auto save = (*engine)->Save(1, state);
  s = save.ok() ? (*save)->Wait() : save.status();
  std::vector<float> back(3, 0);
  trident::TensorRequest request{"v", trident::Tensor::Of(back.data(), 3), {0}, {3}};
  // The other half of the global tensor was never saved: the commit must refuse a gap.
  if (s.code() != absl::StatusCode::kInvalidArgument) {
    std::fprintf(stderr, "consumer: a save with a gap: %s\n", s.ToString().c_str());
    return 1;
  }
  state.tensors[0].placement = {};
  save = (*engine)->Save(2, state);
  s = save.ok() ? (*save)->Wait() : save.status();
  auto loaded = s.ok() ? trident::LoadCheckpoint(dir, trident::kLatestStep, {&request, 1})
                       : absl::StatusOr<trident::LoadResult>(s);
  if (!loaded.ok() || loaded->step != 2 || back != v) {
    std::fprintf(stderr, "consumer: checkpoint: %s\n", loaded.status().ToString().c_str());
    return 1;
  }
  if (fs->renames == 0) {  // the commit renames into place through the given file system
    std::fprintf(stderr, "consumer: the checkpoint did not go through its file system\n");
    return 1;
  }
  engine->reset();
  std::system(("rm -rf " + dir).c_str());
  std::printf("consumer ok (Trident %s): %s, checkpoint step %lld\n", trident::Version(),
              (*comm)->Describe().c_str(),
              static_cast<long long>(loaded->step));
  return 0;
}
