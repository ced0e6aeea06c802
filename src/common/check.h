// TRIDENT_CHECK: a broken internal invariant is a bug; it aborts with a message, never a
// silent return (DESIGN.md, "Errors").
//
//   TRIDENT_CHECK(peer < size_) << "peer " << peer << " out of range";
#ifndef TRIDENT_COMMON_CHECK_H_
#define TRIDENT_COMMON_CHECK_H_

#include <sstream>

namespace trident::internal {

class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

}  // namespace trident::internal

#define TRIDENT_CHECK(cond) \
  if (cond) {               \
  } else                    \
    ::trident::internal::CheckFailure(__FILE__, __LINE__, #cond).stream()

#endif  // TRIDENT_COMMON_CHECK_H_
