// Host memory for large communication buffers: 2 MiB aligned and backed by transparent huge
// pages where the kernel allows (THP "madvise" mode is common). Why: libfabric's shm provider
// moves large messages with process_vm_readv, which pins every source and destination page;
// on a VM that costs about 1 us per 4 KiB page, which caps a copy near 1-2 GB/s, while huge
// pages reach memcpy speed (measured in docs/benchmarks.md).
#ifndef TRIDENT_COMMON_HOST_MEMORY_H_
#define TRIDENT_COMMON_HOST_MEMORY_H_

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"

namespace trident {

struct FreeHostMemory {
  void operator()(void* p) const;
};
using HostMemory = std::unique_ptr<char[], FreeHostMemory>;

// Allocates `bytes` (uninitialised). Allocations of 1 MiB and more are 2 MiB aligned and
// advised to use huge pages; smaller ones come from malloc. Never returns null (CHECK): for
// sizes the library chose itself.
HostMemory AllocateHostMemory(size_t bytes);
// The same for a size that comes from outside (a file, a peer): kResourceExhausted naming the
// size when the memory cannot be had, instead of ending the process.
absl::StatusOr<HostMemory> TryAllocateHostMemory(size_t bytes);

}  // namespace trident

#endif  // TRIDENT_COMMON_HOST_MEMORY_H_
