// Checkpoints of CUDA tensors (ctest label gpu; skips saying "no CUDA device" where there is
// none): the snapshot copies them into page-locked staging on the engine's stream, after the
// work queued on the caller's stream; loading and restoring into CUDA tensors.
#include <thread>

#include "ckpt_test_util.h"
#include "comm/host/inproc.h"
#include "common/cuda.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "trident/checkpoint.h"

#define TRIDENT_REQUIRE_CUDA_DEVICE()                                                \
  do {                                                                                \
    if (::trident::cuda::DeviceCount() == 0) {                                        \
      GTEST_SKIP() << "no CUDA device (" << ::trident::cuda::NoDeviceReason() << ")"; \
    }                                                                                 \
  } while (0)

namespace trident {
namespace {

using ckpt::Box;
using testing::MakeTensor;
using testing::OwnedTensor;
using testing::ScratchDir;

// A tensor's bytes in device memory, uploaded from host bytes.
std::unique_ptr<cuda::DeviceBuffer> Upload(const std::vector<char>& bytes) {
  auto d = cuda::DeviceBuffer::Allocate(bytes.size(), 0);
  EXPECT_TRUE(d.ok()) << d.status();
  if (!d.ok()) return nullptr;
  EXPECT_TRUE(cuda::CopyToDevice((*d)->data(), bytes.data(), bytes.size()).ok());
  return std::move(d).value();
}

void SaveOnGpu(const std::string& dir, size_t budget, uint64_t seed, int64_t rows, bool streamed) {
  const int64_t half = rows / 2;
  testing::RunCkptRanks(2, [&](int r, std::shared_ptr<Communicator> comm) {
    // Rank r: half of "w" [rows, 2048] on the GPU, a CPU tensor, and a GPU tensor replicated
    // on both ranks.
    OwnedTensor w = MakeTensor(seed, "w", DType::kF32, {rows, 2048},
                               Box{{half * r, 0}, {half, 2048}});
    OwnedTensor cpu = MakeTensor(seed, "cpu", DType::kI64, {64}, Box{{32 * r}, {32}});
    OwnedTensor rep = MakeTensor(seed, "rep", DType::kBF16, {300, 7});
    auto dw = Upload(w.bytes);
    auto drep = Upload(rep.bytes);
    ASSERT_TRUE(dw && drep);
    CheckpointState state;
    state.tensors.push_back({"w", Tensor(dw->data(), DType::kF32, w.box.shape, Device::Cuda(0)),
                             {.global_shape = w.global, .offset = w.box.offset}});
    state.tensors.push_back(cpu.View());
    TensorPlacement replicated;
    replicated.replica_index = r;
    replicated.replica_count = 2;
    state.tensors.push_back(
        {"rep", Tensor(drep->data(), DType::kBF16, {300, 7}, Device::Cuda(0)), replicated});
    CheckpointOptions o;
    o.dir = dir;
    o.comm = comm;
    o.memory_budget_bytes = budget;
    auto engine = CheckpointEngine::Create(o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    auto save = (*engine)->Save(1, state);
    ASSERT_TRUE(save.ok()) << save.status();
    // The snapshot is taken: the device memory may change now.
    ASSERT_TRUE(cuda::CopyToDevice(dw->data(), std::vector<char>(w.bytes.size(), 0).data(),
                                   w.bytes.size()).ok());
    EXPECT_TRUE((*save)->Wait().ok()) << (*save)->status();
    EXPECT_EQ((*save)->stats().streamed, streamed);
    if (!streamed) {
      EXPECT_TRUE((*save)->stats().replica_status.ok()) << (*save)->stats().replica_status;
      auto held = (*engine)->HeldReplica();
      ASSERT_NE(held, nullptr);
      // Restore the buddy's GPU tensor into GPU memory.
      const int owner = held->owner_rank();
      auto into = cuda::DeviceBuffer::Allocate(w.bytes.size(), 0);
      ASSERT_TRUE(into.ok());
      TensorRequest req{"w", Tensor((*into)->data(), DType::kF32, {half, 2048}, Device::Cuda(0)),
                        {half * owner, 0}, {rows, 2048}};
      ASSERT_TRUE(held->Restore({&req, 1}).ok());
      std::vector<char> back(w.bytes.size());
      ASSERT_TRUE(cuda::CopyToHost(back.data(), (*into)->data(), back.size()).ok());
      EXPECT_EQ(back, testing::SliceBytes(seed, "w", DType::kF32, {rows, 2048},
                                          Box{{half * owner, 0}, {half, 2048}}));
    }
  });
}

void ExpectLoads(const std::string& dir, uint64_t seed, int64_t rows) {
  EXPECT_EQ(testing::LoadAndCompare(dir, 1, seed, "w", DType::kF32, {rows, 2048},
                                    Box{{0, 0}, {rows, 2048}}), "");
  EXPECT_EQ(testing::LoadAndCompare(dir, 1, seed, "cpu", DType::kI64, {64}, Box{{0}, {64}}), "");
  EXPECT_EQ(testing::LoadAndCompare(dir, 1, seed, "rep", DType::kBF16, {300, 7},
                                    Box{{0, 0}, {300, 7}}), "");
  // Into device memory: a slice across both ranks' pieces.
  const Box box{{rows / 2 - 24, 5}, {48, 100}};
  auto into = cuda::DeviceBuffer::Allocate(48 * 100 * 4, 0);
  ASSERT_TRUE(into.ok());
  TensorRequest req{"w", Tensor((*into)->data(), DType::kF32, box.shape, Device::Cuda(0)),
                    box.offset, {}};
  auto r = LoadCheckpoint(dir, 1, {&req, 1});
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<char> back(48 * 100 * 4);
  ASSERT_TRUE(cuda::CopyToHost(back.data(), (*into)->data(), back.size()).ok());
  EXPECT_EQ(back, testing::SliceBytes(seed, "w", DType::kF32, {rows, 2048}, box));
}

TEST(CudaCheckpointTest, GpuTensorsSaveAndLoad) {
  TRIDENT_REQUIRE_CUDA_DEVICE();
  ScratchDir dir;
  SaveOnGpu(dir.path(), 64 << 20, 11, 2048, /*streamed=*/false);  // 8 MiB of "w" per rank
  ExpectLoads(dir.path(), 11, 2048);
}

TEST(CudaCheckpointTest, GpuTensorsStreamThroughASmallBudget) {
  TRIDENT_REQUIRE_CUDA_DEVICE();
  ScratchDir dir;
  SaveOnGpu(dir.path(), 16 << 20, 12, 8192, /*streamed=*/true);  // 32 MiB per rank
  ExpectLoads(dir.path(), 12, 8192);
}

}  // namespace
}  // namespace trident
