/* trident/c_api.h compiles as strict C89 (-std=c89 -pedantic-errors): a C program of any age
 * can include it. Built, never run. */
#include "trident/c_api.h"

int trident_c89_header_check(void) {
  trident_comm_options options;
  trident_comm_options_init(&options);
  return (int)options.struct_size + TRIDENT_C_API_VERSION;
}
