# Findxxhash: xxHash (Debian: libxxhash-dev) ships a pkg-config file only, so this module
# wraps it. health's SDC digests take XXH3_64bits from it.
#
# Defines the imported target xxhash::xxhash and xxhash_FOUND, xxhash_VERSION.
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_XXHASH QUIET libxxhash)
endif()

find_path(XXHASH_INCLUDE_DIR xxhash.h HINTS ${PC_XXHASH_INCLUDE_DIRS})
find_library(XXHASH_LIBRARY NAMES xxhash HINTS ${PC_XXHASH_LIBRARY_DIRS})
set(xxhash_VERSION ${PC_XXHASH_VERSION})

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(xxhash
  REQUIRED_VARS XXHASH_LIBRARY XXHASH_INCLUDE_DIR
  VERSION_VAR xxhash_VERSION)

if(xxhash_FOUND AND NOT TARGET xxhash::xxhash)
  add_library(xxhash::xxhash UNKNOWN IMPORTED)
  set_target_properties(xxhash::xxhash PROPERTIES
    IMPORTED_LOCATION "${XXHASH_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${XXHASH_INCLUDE_DIR}")
endif()
mark_as_advanced(XXHASH_INCLUDE_DIR XXHASH_LIBRARY)
