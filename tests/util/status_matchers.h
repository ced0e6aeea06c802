// StatusIs(code, message_matcher) for absl::Status and absl::StatusOr<T>, so that a test
// checks the specific error:
//   EXPECT_THAT(LoadCheckpoint(...).status(),
//               StatusIs(absl::StatusCode::kDataLoss, HasSubstr("field byte_length")));
#ifndef TRIDENT_TESTS_UTIL_STATUS_MATCHERS_H_
#define TRIDENT_TESTS_UTIL_STATUS_MATCHERS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace trident::testing {

inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER_P2(StatusIs, code, message, "") {
  const absl::Status& s = ::trident::testing::StatusOf(arg);
  *result_listener << "status is " << s;
  return s.code() == code &&
         ::testing::ExplainMatchResult(message, std::string(s.message()), result_listener);
}

}  // namespace trident::testing

#endif  // TRIDENT_TESTS_UTIL_STATUS_MATCHERS_H_
