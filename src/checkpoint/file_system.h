// The checkpoint layer's helpers over a FileSystem (trident/file_system.h, the public seam).
#ifndef TRIDENT_CHECKPOINT_FILE_SYSTEM_H_
#define TRIDENT_CHECKPOINT_FILE_SYSTEM_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "trident/file_system.h"

namespace trident {

// Helpers over any FileSystem.
absl::StatusOr<std::string> ReadFileToString(FileSystem& fs, const std::string& path);
// The same for a file that may hold anything (a checkpoint's): kDataLoss naming the file when
// it is larger than max_bytes, so that its size never sizes an allocation.
absl::StatusOr<std::string> ReadFileToString(FileSystem& fs, const std::string& path,
                                             uint64_t max_bytes);
// Writes a small file and fsyncs it (buffered).
absl::Status WriteFileAndSync(FileSystem& fs, const std::string& path, absl::string_view data);
std::string JoinPath(absl::string_view a, absl::string_view b);

}  // namespace trident

#endif  // TRIDENT_CHECKPOINT_FILE_SYSTEM_H_
