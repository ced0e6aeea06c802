// Helpers for communicator tests: run one function per rank on its own thread, and make
// test values that every dtype represents exactly.
#ifndef TRIDENT_TESTS_COMM_COMM_TEST_UTIL_H_
#define TRIDENT_TESTS_COMM_COMM_TEST_UTIL_H_

#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "trident/communicator.h"

namespace trident::testing {

// Runs fn(rank, comm) on one thread per communicator and joins them all.
inline void RunRanks(std::vector<std::unique_ptr<Communicator>>& comms,
                     const std::function<void(int, Communicator&)>& fn) {
  std::vector<std::thread> threads;
  for (size_t r = 0; r < comms.size(); ++r) {
    threads.emplace_back([&, r] { fn(static_cast<int>(r), *comms[r]); });
  }
  for (auto& t : threads) t.join();
}

inline uint16_t ToBf16(double v) {
  float f = static_cast<float>(v);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
inline double FromBf16(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t ToF16(double v) {
  _Float16 h = static_cast<_Float16>(static_cast<float>(v));
  uint16_t out;
  std::memcpy(&out, &h, 2);
  return out;
}
inline double FromF16(uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, 2);
  return static_cast<float>(h);
}

// Element i of a buffer of `dtype`, stored from / read as a double. Integers wrap like the
// element type does.
inline void Store(DType dtype, void* buf, size_t i, double v) {
  switch (dtype) {
    case DType::kF32: static_cast<float*>(buf)[i] = static_cast<float>(v); return;
    case DType::kF64: static_cast<double*>(buf)[i] = v; return;
    case DType::kF16: static_cast<uint16_t*>(buf)[i] = ToF16(v); return;
    case DType::kBF16: static_cast<uint16_t*>(buf)[i] = ToBf16(v); return;
    case DType::kI8: static_cast<int8_t*>(buf)[i] = static_cast<int8_t>(static_cast<int64_t>(v)); return;
    case DType::kU8: static_cast<uint8_t*>(buf)[i] = static_cast<uint8_t>(static_cast<int64_t>(v)); return;
    case DType::kI32: static_cast<int32_t*>(buf)[i] = static_cast<int32_t>(static_cast<int64_t>(v)); return;
    case DType::kI64: static_cast<int64_t*>(buf)[i] = static_cast<int64_t>(v); return;
  }
}
inline double Load(DType dtype, const void* buf, size_t i) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(buf)[i];
    case DType::kF64: return static_cast<const double*>(buf)[i];
    case DType::kF16: return FromF16(static_cast<const uint16_t*>(buf)[i]);
    case DType::kBF16: return FromBf16(static_cast<const uint16_t*>(buf)[i]);
    case DType::kI8: return static_cast<const int8_t*>(buf)[i];
    case DType::kU8: return static_cast<const uint8_t*>(buf)[i];
    case DType::kI32: return static_cast<const int32_t*>(buf)[i];
    case DType::kI64: return static_cast<double>(static_cast<const int64_t*>(buf)[i]);
  }
  return 0;
}

// A typeless buffer of `count` elements of `dtype`.
struct Buffer {
  DType dtype;
  size_t count;
  std::vector<char> bytes;
  Buffer(DType d, size_t n) : dtype(d), count(n), bytes(n * DTypeSize(d) + 1) {}
  Tensor tensor() { return Tensor(bytes.data(), dtype, {static_cast<int64_t>(count)}); }
  void Set(size_t i, double v) { testing::Store(dtype, bytes.data(), i, v); }
  double Get(size_t i) const { return testing::Load(dtype, bytes.data(), i); }
};

}  // namespace trident::testing

#endif  // TRIDENT_TESTS_COMM_COMM_TEST_UTIL_H_
