// trident/tensor.h: the element types, reductions and the non-owning Tensor view that every
// communication and checkpoint call takes.
//
// A Tensor never owns memory: the caller keeps the buffer alive until the operation that uses
// it has completed (its Work is done). Tensors are always contiguous. Thread-safety: a Tensor
// is a plain value; the memory it points to follows the rules of the call it is passed to.
//
//   std::vector<float> grads(1024);
//   trident::Tensor t = trident::Tensor::Of(grads.data(), grads.size());
//   comm->AllReduce(t, t, trident::ReduceOp::kSum)->Wait();
#ifndef TRIDENT_TENSOR_H_
#define TRIDENT_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include "absl/strings/string_view.h"
#include <type_traits>

#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"

namespace trident {

enum class DType : uint8_t { kF32, kF64, kF16, kBF16, kI8, kU8, kI32, kI64 };
inline constexpr DType kAllDTypes[] = {DType::kF32, DType::kF64, DType::kF16, DType::kBF16,
                                       DType::kI8,  DType::kU8,  DType::kI32, DType::kI64};

size_t DTypeSize(DType dtype);
absl::string_view DTypeName(DType dtype);  // "f32", "bf16", ...
bool IsFloatingPoint(DType dtype);
absl::StatusOr<DType> ParseDType(absl::string_view name);

enum class ReduceOp : uint8_t { kSum, kProd, kMin, kMax, kAvg };
absl::string_view ReduceOpName(ReduceOp op);  // "sum", "avg", ...
absl::StatusOr<ReduceOp> ParseReduceOp(absl::string_view name);

struct Device {
  enum class Type : uint8_t { kCpu, kCuda };
  Type type = Type::kCpu;
  int index = 0;  // CUDA device ordinal; 0 for the CPU.

  static Device Cpu() { return {}; }
  static Device Cuda(int index) { return {Type::kCuda, index}; }
  bool is_cpu() const { return type == Type::kCpu; }
  // Written out (not defaulted) so that the public headers compile as C++17.
  friend bool operator==(const Device& a, const Device& b) {
    return a.type == b.type && a.index == b.index;
  }
  friend bool operator!=(const Device& a, const Device& b) { return !(a == b); }
};

// Maps C++ element types to DTypes for Tensor::Of.
template <typename T>
constexpr DType DTypeOf() {
  if constexpr (std::is_same_v<T, float>) return DType::kF32;
  else if constexpr (std::is_same_v<T, double>) return DType::kF64;
  else if constexpr (std::is_same_v<T, int8_t>) return DType::kI8;
  else if constexpr (std::is_same_v<T, uint8_t>) return DType::kU8;
  else if constexpr (std::is_same_v<T, int32_t>) return DType::kI32;
  else if constexpr (std::is_same_v<T, int64_t>) return DType::kI64;
  else static_assert(sizeof(T) == 0, "no DType for this C++ type; use the Tensor constructor");
}

class Tensor {
 public:
  using Shape = absl::InlinedVector<int64_t, 4>;

  Tensor() = default;
  Tensor(void* data, DType dtype, Shape shape, Device device = Device::Cpu())
      : data_(data), dtype_(dtype), shape_(std::move(shape)), device_(device) {}

  // A 1-D tensor over `count` elements of a typed buffer.
  template <typename T>
  static Tensor Of(T* data, int64_t count, Device device = Device::Cpu()) {
    return Tensor(const_cast<std::remove_const_t<T>*>(data), DTypeOf<std::remove_const_t<T>>(),
                  {count}, device);
  }

  void* data() const { return data_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  Device device() const { return device_; }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  Shape shape_ = {0};
  Device device_;
};

}  // namespace trident

#endif  // TRIDENT_TENSOR_H_
