#include "common/host_memory.h"

#include <sys/mman.h>

#include <cstdlib>
#include <limits>

#include "absl/strings/str_cat.h"

#include "common/check.h"

namespace trident {

namespace {
constexpr size_t kHugePage = size_t{2} << 20;
}  // namespace

void FreeHostMemory::operator()(void* p) const { std::free(p); }

absl::StatusOr<HostMemory> TryAllocateHostMemory(size_t bytes) {
  if (bytes < (size_t{1} << 20)) {
    void* p = std::malloc(bytes == 0 ? 1 : bytes);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("out of memory allocating ", bytes, " bytes"));
    }
    return HostMemory(static_cast<char*>(p));
  }
  if (bytes > std::numeric_limits<size_t>::max() - kHugePage) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes"));
  }
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = nullptr;
  if (posix_memalign(&p, kHugePage, rounded) != 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("out of memory allocating ", rounded, " bytes"));
  }
  // Advice only: without THP the memory still works, with 4 KiB pages.
  (void)madvise(p, rounded, MADV_HUGEPAGE);
  return HostMemory(static_cast<char*>(p));
}

HostMemory AllocateHostMemory(size_t bytes) {
  absl::StatusOr<HostMemory> memory = TryAllocateHostMemory(bytes);
  TRIDENT_CHECK(memory.ok()) << memory.status().message();
  return std::move(memory).value();
}

}  // namespace trident
