// ckpt_interop_writer OUT: saves a checkpoint the way a trainer on a tp2 x dp2 mesh would (four
// ranks as threads, the checkpoint engine with its real files), for the readers of other
// projects to load (tests/python/test_checkpoint_interop.py: safetensors, torch's DCP reader).
//
// Writes OUT/ckpt/ (step 7, every tensor split into real slices: by tp, by dp replicas, or
// ZeRO-like over all four ranks) and, independently of the checkpoint, what each whole tensor
// holds: OUT/expected/<name>.bin (row-major bytes) and OUT/expected.json
// ({"step": 7, "tensors": {name: {"dtype": "F32", "shape": [..]}}}). Exit 0 on success; 1 with
// the error on stderr.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ckpt_test_util.h"
#include "nlohmann/json.hpp"

namespace trident {
namespace {

using ckpt::Box;
using testing::OwnedTensor;

constexpr uint64_t kSeed = 12;
constexpr int64_t kStep = 7;
constexpr int kTp = 2, kDp = 2, kRanks = kTp * kDp;

struct GlobalTensor {
  std::string name;
  DType dtype;
  Tensor::Shape shape;
};

const std::vector<GlobalTensor>& Tensors() {
  static const auto* t = new std::vector<GlobalTensor>{
      {"layers.0.attn.qkv.weight", DType::kF32, {12, 8}},  // rows by tp, replicated over dp
      {"layers.0.mlp.w2.weight", DType::kBF16, {8, 10}},   // columns by tp, replicated over dp
      {"layers.0.norm.weight", DType::kF32, {8}},          // on every rank
      {"embed.weight", DType::kF16, {16, 4}},              // rows over all four ranks
      {"optim.exp_avg.layers.0.attn.qkv.weight", DType::kF32, {12, 8}},  // ZeRO: over all four
      {"optim.step", DType::kI64, {}},                     // a scalar on every rank
      {"buffers.position_ids", DType::kI64, {1, 16}},      // on every rank
      {"buffers.mask", DType::kU8, {5, 3}},                // columns by tp, replicated over dp
      {"buffers.bias_i8", DType::kI8, {6}},                // by tp, replicated over dp
      {"buffers.counts_i32", DType::kI32, {4, 2}},         // rows over all four ranks
      {"head.weight", DType::kF64, {3, 3}},                // on every rank
  };
  return *t;
}

// This rank's piece of each tensor, and its replica index and count.
std::vector<OwnedTensor> StateOfRank(int rank) {
  const int tp = rank % kTp, dp = rank / kTp;
  std::vector<OwnedTensor> out;
  for (const GlobalTensor& g : Tensors()) {
    Box box{Tensor::Shape(g.shape.size(), 0), g.shape};
    int index = 0, count = 1;
    const std::string& n = g.name;
    if (n == "layers.0.attn.qkv.weight" || n == "buffers.bias_i8") {
      box.shape[0] = g.shape[0] / kTp;
      box.offset[0] = tp * box.shape[0];
      index = dp, count = kDp;
    } else if (n == "layers.0.mlp.w2.weight" || n == "buffers.mask") {
      const int64_t cols = g.shape[1];
      box.offset[1] = tp * (cols / kTp);
      box.shape[1] = tp == kTp - 1 ? cols - box.offset[1] : cols / kTp;
      index = dp, count = kDp;
    } else if (n == "embed.weight" || n == "optim.exp_avg.layers.0.attn.qkv.weight" ||
               n == "buffers.counts_i32") {
      box.shape[0] = g.shape[0] / kRanks;
      box.offset[0] = rank * box.shape[0];
    } else {
      index = rank, count = kRanks;
    }
    OwnedTensor t = testing::MakeTensor(kSeed, n, g.dtype, g.shape, box);
    t.replica_index = index;
    t.replica_count = count;
    out.push_back(std::move(t));
  }
  return out;
}

absl::Status WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: ckpt_interop_writer OUT\n");
    return 2;
  }
  const std::string out = argv[1];
  std::shared_ptr<FileSystem> fs = PosixFileSystem();
  for (const std::string& d : {out, out + "/expected"}) {
    if (absl::Status s = fs->CreateDir(d); !s.ok()) {
      std::fprintf(stderr, "ckpt_interop_writer: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  std::vector<absl::Status> results(kRanks);
  testing::RunCkptRanks(kRanks, [&](int rank, std::shared_ptr<Communicator> comm) {
    CheckpointOptions o;
    o.dir = out + "/ckpt";
    o.comm = comm;
    o.layout = "tp2.dp2";
    o.peer_replicas = false;
    auto engine = CheckpointEngine::Create(o);
    if (!engine.ok()) {
      results[rank] = engine.status();
      return;
    }
    std::vector<OwnedTensor> state = StateOfRank(rank);
    auto save = (*engine)->Save(kStep, testing::StateOf(state, absl::StrCat("rank=", rank)));
    results[rank] = save.ok() ? (*save)->Wait() : save.status();
  });
  for (int r = 0; r < kRanks; ++r) {
    if (!results[r].ok()) {
      std::fprintf(stderr, "ckpt_interop_writer: rank %d: %s\n", r, results[r].ToString().c_str());
      return 1;
    }
  }
  nlohmann::json tensors = nlohmann::json::object();
  for (const GlobalTensor& g : Tensors()) {
    const Box whole{Tensor::Shape(g.shape.size(), 0), g.shape};
    const std::vector<char> bytes = testing::SliceBytes(kSeed, g.name, g.dtype, g.shape, whole);
    if (absl::Status s = WriteFile(out + "/expected/" + g.name + ".bin",
                                   std::string(bytes.begin(), bytes.end()));
        !s.ok()) {
      std::fprintf(stderr, "ckpt_interop_writer: %s\n", s.ToString().c_str());
      return 1;
    }
    tensors[g.name] = {{"dtype", std::string(ckpt::SafetensorsDType(g.dtype))},
                       {"shape", g.shape}};
  }
  nlohmann::json expected = {{"step", kStep}, {"tensors", tensors}};
  if (absl::Status s = WriteFile(out + "/expected.json", expected.dump(1)); !s.ok()) {
    std::fprintf(stderr, "ckpt_interop_writer: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("%s/ckpt step %lld\n", out.c_str(), static_cast<long long>(kStep));
  return 0;
}

}  // namespace
}  // namespace trident

int main(int argc, char** argv) { return trident::Main(argc, argv); }
