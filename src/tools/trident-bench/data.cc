#include "data.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "common/check.h"

namespace trident::bench {
namespace {

uint64_t Mix(int rank, int64_t i) {
  uint64_t h = static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull +
               static_cast<uint64_t>(rank + 1) * 0xC2B2AE3D27D4EB4Full;
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 32;
  return h;
}

// bf16 is the top half of an f32; the test values are exact, so truncation is exact too,
// but round to nearest even anyway so that any value stores sensibly.
uint16_t FloatToBf16(float f) {
  uint32_t bits = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

float Bf16ToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

// Largest integer magnitude such that every integer up to it is exact in the dtype.
int64_t ExactLimit(DType dtype) {
  switch (dtype) {
    case DType::kF32: return int64_t{1} << 24;
    case DType::kF64: return int64_t{1} << 53;
    case DType::kF16: return 2048;
    case DType::kBF16: return 256;
    case DType::kI8: return 127;
    case DType::kU8: return 255;
    case DType::kI32: return INT32_MAX;
    case DType::kI64: return INT64_MAX;
  }
  return 0;
}

double Epsilon(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 0x1p-23;
    case DType::kF64: return 0x1p-52;
    case DType::kF16: return 0x1p-10;
    case DType::kBF16: return 0x1p-7;
    default: return 0;
  }
}

}  // namespace

void StoreElement(void* base, DType dtype, int64_t i, double value) {
  switch (dtype) {
    case DType::kF32: static_cast<float*>(base)[i] = static_cast<float>(value); return;
    case DType::kF64: static_cast<double*>(base)[i] = value; return;
    case DType::kF16: static_cast<_Float16*>(base)[i] = static_cast<_Float16>(value); return;
    case DType::kBF16:
      static_cast<uint16_t*>(base)[i] = FloatToBf16(static_cast<float>(value));
      return;
    case DType::kI8: static_cast<int8_t*>(base)[i] = static_cast<int8_t>(value); return;
    case DType::kU8: static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(value); return;
    case DType::kI32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(value); return;
    case DType::kI64: static_cast<int64_t*>(base)[i] = static_cast<int64_t>(value); return;
  }
  TRIDENT_CHECK(false) << "bad dtype " << static_cast<int>(dtype);
}

double LoadElement(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(base)[i];
    case DType::kF64: return static_cast<const double*>(base)[i];
    case DType::kF16: return static_cast<double>(static_cast<const _Float16*>(base)[i]);
    case DType::kBF16: return Bf16ToFloat(static_cast<const uint16_t*>(base)[i]);
    case DType::kI8: return static_cast<const int8_t*>(base)[i];
    case DType::kU8: return static_cast<const uint8_t*>(base)[i];
    case DType::kI32: return static_cast<const int32_t*>(base)[i];
    case DType::kI64: return static_cast<double>(static_cast<const int64_t*>(base)[i]);
  }
  TRIDENT_CHECK(false) << "bad dtype " << static_cast<int>(dtype);
  __builtin_unreachable();
}

TestData::TestData(DType dtype, ReduceOp reduce, int world_size)
    : dtype_(dtype), reduce_(reduce), world_size_(world_size) {
  TRIDENT_CHECK(world_size >= 1) << "world size " << world_size;
  int64_t limit = ExactLimit(dtype);
  // Sums of n inputs in [-a, a] stay within [-limit, limit]; a = 1 past 127 ranks of i8 (the
  // check may then overflow: such worlds need a wider dtype to be checked).
  sum_amplitude_ = std::clamp<int64_t>(limit / world_size, 1, 4);
  // Data movement: the widest exact range, capped so that a double holds it exactly.
  int64_t span_half = std::min<int64_t>(limit, int64_t{1} << 30);
  if (dtype == DType::kU8) {
    move_lo_ = 0;
    move_span_ = 256;
  } else if (dtype == DType::kI8) {
    move_lo_ = -128;
    move_span_ = 256;
  } else {
    move_lo_ = -span_half;
    move_span_ = 2 * span_half + 1;
  }
  tolerance_ulps_ = (reduce == ReduceOp::kAvg && IsFloatingPoint(dtype)) ? 2 : 0;
}

double TestData::ReduceInput(int rank, int64_t i) const {
  uint64_t h = Mix(rank, i);
  const bool is_unsigned = dtype_ == DType::kU8;
  switch (reduce_) {
    case ReduceOp::kSum:
      if (is_unsigned) return static_cast<double>(h % (sum_amplitude_ + 1));
      return static_cast<double>(static_cast<int64_t>(h % (2 * sum_amplitude_ + 1)) -
                                 sum_amplitude_);
    case ReduceOp::kProd:
      // One rank holds 2, the others +-1: every partial product is exact.
      if (rank == i % world_size_) return 2;
      return (is_unsigned || (h & 1)) ? 1 : -1;
    case ReduceOp::kMin:
    case ReduceOp::kMax:
      return MoveInput(rank, i);
    case ReduceOp::kAvg: {
      // base(i) + d(r, i) with the d summing to 0 over ranks: the average is base(i).
      double base = static_cast<double>(static_cast<int64_t>(Mix(-1, i) % 9) - 4);
      return base + (rank == i % world_size_ ? world_size_ - 1 : -1);
    }
  }
  return 0;
}

double TestData::Reduced(int64_t i) const {
  if (reduce_ == ReduceOp::kAvg) {
    return static_cast<double>(static_cast<int64_t>(Mix(-1, i) % 9) - 4);
  }
  double acc = ReduceInput(0, i);
  for (int r = 1; r < world_size_; ++r) {
    double v = ReduceInput(r, i);
    switch (reduce_) {
      case ReduceOp::kSum: acc += v; break;
      case ReduceOp::kProd: acc *= v; break;
      case ReduceOp::kMin: acc = std::min(acc, v); break;
      case ReduceOp::kMax: acc = std::max(acc, v); break;
      case ReduceOp::kAvg: break;
    }
  }
  return acc;
}

double TestData::MoveInput(int rank, int64_t i) const {
  return static_cast<double>(move_lo_ + static_cast<int64_t>(Mix(rank, i) % move_span_));
}

bool TestData::Matches(double got, double want) const {
  if (got == want) return true;
  if (tolerance_ulps_ == 0) return false;
  return std::fabs(got - want) <= tolerance_ulps_ * Epsilon(dtype_) * std::fabs(want);
}

}  // namespace trident::bench
