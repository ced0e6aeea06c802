// Helpers for the GPU tests (ctest label gpu): skipping where there is no CUDA device, and
// host buffers mirrored in device memory.
#ifndef TRIDENT_TESTS_GPU_GPU_TEST_UTIL_H_
#define TRIDENT_TESTS_GPU_GPU_TEST_UTIL_H_

#include <memory>

#include "../comm/comm_test_util.h"
#include "common/cuda.h"
#include "gtest/gtest.h"
#include "trident/tensor.h"

// Skips the test, saying why, on a machine (or build) without a CUDA device. ctest reports
// such a test as skipped (SKIP_REGULAR_EXPRESSION "no CUDA device" in CMakeLists.txt).
#define TRIDENT_REQUIRE_CUDA_DEVICE()                                                  \
  do {                                                                                  \
    if (::trident::cuda::DeviceCount() == 0) {                                          \
      GTEST_SKIP() << "no CUDA device (" << ::trident::cuda::NoDeviceReason() << ")";   \
    }                                                                                   \
  } while (0)

namespace trident::testing {

// Values on the host (Set/Get) and a copy in device memory; Upload and Download copy all of it.
struct GpuBuffer {
  Buffer host;
  std::unique_ptr<cuda::DeviceBuffer> dev;
  int device;

  GpuBuffer(DType dtype, size_t count, int device = 0) : host(dtype, count), device(device) {
    auto d = cuda::DeviceBuffer::Allocate(host.bytes.size(), device);
    EXPECT_TRUE(d.ok()) << d.status();
    if (d.ok()) dev = std::move(*d);
  }
  size_t bytes() const { return host.count * DTypeSize(host.dtype); }
  void* data(size_t element = 0) const {
    return static_cast<char*>(dev->data()) + element * DTypeSize(host.dtype);
  }
  Tensor tensor() const {
    return Tensor(dev->data(), host.dtype, {static_cast<int64_t>(host.count)}, Device::Cuda(device));
  }
  void Set(size_t i, double v) { host.Set(i, v); }
  double Get(size_t i) const { return host.Get(i); }
  void Upload() {
    absl::Status s = cuda::CopyToDevice(dev->data(), host.bytes.data(), bytes());
    EXPECT_TRUE(s.ok()) << s;
  }
  void Download() {
    absl::Status s = cuda::CopyToHost(host.bytes.data(), dev->data(), bytes());
    EXPECT_TRUE(s.ok()) << s;
  }
};

}  // namespace trident::testing

#endif  // TRIDENT_TESTS_GPU_GPU_TEST_UTIL_H_
