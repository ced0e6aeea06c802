#include "trident/version.h"

namespace trident {

int VersionCode() { return TRIDENT_VERSION_CODE; }

const char* Version() {
#define TRIDENT_STR_(x) #x
#define TRIDENT_STR(x) TRIDENT_STR_(x)
  return TRIDENT_STR(TRIDENT_MAJOR) "." TRIDENT_STR(TRIDENT_MINOR) "." TRIDENT_STR(TRIDENT_PATCH);
#undef TRIDENT_STR
#undef TRIDENT_STR_
}

}  // namespace trident
