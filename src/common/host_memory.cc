#include "common/host_memory.h"

#include <sys/mman.h>

#include <cstdlib>

#include "common/check.h"

namespace trident {

namespace {
constexpr size_t kHugePage = size_t{2} << 20;
}  // namespace

void FreeHostMemory::operator()(void* p) const { std::free(p); }

HostMemory AllocateHostMemory(size_t bytes) {
  if (bytes < (size_t{1} << 20)) {
    void* p = std::malloc(bytes == 0 ? 1 : bytes);
    TRIDENT_CHECK(p != nullptr) << "out of memory allocating " << bytes << " bytes";
    return HostMemory(static_cast<char*>(p));
  }
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = nullptr;
  TRIDENT_CHECK(posix_memalign(&p, kHugePage, rounded) == 0)
      << "out of memory allocating " << rounded << " bytes";
  // Advice only: without THP the memory still works, with 4 KiB pages.
  (void)madvise(p, rounded, MADV_HUGEPAGE);
  return HostMemory(static_cast<char*>(p));
}

}  // namespace trident
